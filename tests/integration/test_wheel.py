"""What the image installs: the wheel builds, installs into a clean venv, and its entry points run
from it (images cannot be built or pulled here; the Dockerfile's own shape is checked below)."""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_installs_in_a_clean_venv_and_its_entry_points_run(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("dcnios-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "dcnios/py.typed",
        "dcnios/schemas/storage_event.avsc",
        "dcnios/nifi_recipes/consumer-v2.json",
        "dcnios/deploy/k8s.py",
        "dcnios/producers/run.py",
        "dcnios/consumers/run.py",
        "dcnios/cli/k8s.py",
    ):
        assert needed in names, needed
    assert not any(n.startswith(("tests/", "bench/")) for n in names)

    clean = tmp_path / "venv"
    venv.create(clean, with_pip=False)
    python = clean / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    # The dependencies come from this venv's site-packages (no index here); dcnios must not.
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = subprocess.run(
        [str(python), "-c", "import dcnios.deploy.k8s as m; print(m.__file__)"],
        cwd=tmp_path,  # not the repo root, whose ./dcnios would shadow the installed package
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert where.startswith(str(site)), where
    for entry in ("dcnios", "dcnios-producer", "dcnios-consumer"):
        done = subprocess.run(
            [str(clean / "bin" / entry), "--help"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"usage: {entry}")
    rendered = subprocess.run(
        [
            str(clean / "bin" / "dcnios"),
            "k8s",
            "-c",
            str(REPO / "examples" / "k8s.yaml"),
            "--out",
            str(tmp_path / "k8s"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stderr
    assert (tmp_path / "k8s" / "kustomization.yaml").is_file()


def test_the_dockerfile_is_multi_stage_non_root_and_copies_every_package() -> None:
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert len(stages) == 2 and all("-slim" in s for s in stages)
    assert re.search(r"^USER 10001", text, re.MULTILINE)
    assert "--no-index --find-links /wheels" in text
    package_dirs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ].values()
    copied = set(re.findall(r"^COPY (\S+) \1$", text, re.MULTILINE))
    # A package inside a copied directory (consumers/workflows in consumers) comes with it.
    assert all(any(d == c or d.startswith(c + "/") for c in copied) for d in package_dirs), copied
    # The uid the Deployments run as is the image's user.
    from dcnios.deploy.workloads import RUN_AS

    assert f"--uid {RUN_AS}" in text
