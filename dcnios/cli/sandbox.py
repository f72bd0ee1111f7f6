"""`dcnios sandbox dcache|oscar`: local stand-ins for trying a pipeline before touching production."""

from __future__ import annotations

import argparse
import atexit
import errno
import os
import shutil
import sys
import tempfile
from pathlib import Path

from dcnios.cli._common import EXIT_OK, StopFlag, add_common
from dcnios.errors import ConfigError

__all__ = ["register"]

_PASSWORD_ENV = "DCNIOS_SANDBOX_PASSWORD"  # noqa: S105 - the name of a variable, not a password


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sandbox",
        help="run a local dCache or OSCAR stand-in (dcnios up starts them from the spec)",
        description="Stand-ins that follow the dCache events API and the OSCAR API closely enough "
        "to try a pipeline against, and do real work: files copied into a directory become dCache "
        "events; OSCAR jobs run a script. Passwords come from $" + _PASSWORD_ENV + ", never argv.",
    )
    kinds = p.add_subparsers(title="stand-ins", metavar="KIND", required=True)

    d = kinds.add_parser(
        "dcache",
        help="the dCache events API, namespace listing and an HTTPS WebDAV door over a local directory",
        description="Serve /api/v1/events (SSE channels, inotify subscriptions), /api/v1/namespace "
        "and a read-only WebDAV door over DIR, which is the namespace root '/'. The door also "
        "listens on an HTTPS port of its own with a throwaway CA (printed at start), since OSCAR's "
        "supervisor only speaks https:// to WebDAV. Files copied, moved "
        "or deleted under DIR produce the dCache event sequence (IN_CREATE, IN_OPEN, IN_MODIFY, "
        "IN_ATTRIB, IN_CLOSE_WRITE; IN_MOVED_FROM/TO; IN_DELETE).",
        epilog=f"The user is --user with the password in ${_PASSWORD_ENV} (default 'sandbox').",
    )
    d.add_argument("--root", metavar="DIR", required=True, help="directory served as '/'")
    d.add_argument("--port", type=int, default=3880, help="port (default 3880)")
    d.add_argument("--user", default="sandbox", help="the user name clients log in with")
    add_common(d, config=False)
    d.set_defaults(run=_run_dcache)

    o = kinds.add_parser(
        "oscar",
        help="the OSCAR API; each job runs OSCAR's real FaaS supervisor with a local script",
        description="Serve the OSCAR manager API (/job, /run, /system/services, /system/logs). Each "
        "accepted job runs `echo $EVENT | supervisor` with the faas-supervisor package, as an "
        "OSCAR job's pod does: for a dCache event it stages the file from the --webdav door into "
        "$INPUT_FILE_PATH, then runs SCRIPT; files written to $TMP_OUTPUT_DIR are collected into "
        "OUTPUT/<service>/. A job fails when staging fails, never because of the script's exit "
        "status (as in OSCAR).",
        epilog=f"The admin user is --user with the password in ${_PASSWORD_ENV} (default 'sandbox').",
    )
    o.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    o.add_argument(
        "--service",
        action="append",
        metavar="NAME=SCRIPT",
        required=True,
        help="a service and the script its jobs run (repeatable)",
    )
    o.add_argument("--output", metavar="DIR", default="oscar-output", help="where outputs are collected")
    o.add_argument(
        "--webdav",
        metavar="HOST:PORT",
        help="dCache's HTTPS WebDAV door for input files (what `dcnios sandbox dcache` prints)",
    )
    o.add_argument("--webdav-ca", metavar="PEM", help="CA bundle the door's certificate is checked with")
    o.add_argument("--webdav-user", default="sandbox", help="WebDAV login (password: $" + _PASSWORD_ENV + ")")
    o.add_argument("--input-path", default="/", help="dCache directory input files are read from (default /)")
    o.add_argument("--workers", type=int, default=4, help="jobs run at once (default 4)")
    o.add_argument("--user", default="oscar", help="cluster admin user")
    add_common(o, config=False)
    o.set_defaults(run=_run_oscar)


def _password() -> str:
    return os.environ.get(_PASSWORD_ENV, "sandbox")


def _listen_error(port: int, exc: OSError) -> ConfigError:
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(f"--port: port {port} is already in use")
    return ConfigError(f"--port: cannot listen on {port}: {exc.strerror}")


def _run_dcache(args: argparse.Namespace) -> int:
    from dcnios.sandbox.dcache import DCacheEmulator
    from dcnios.sandbox.localfs import DirectoryEvents
    from dcnios.sandbox.tls import make_pki

    root = os.path.abspath(args.root)
    if not os.path.isdir(root):
        raise ConfigError(f"--root: directory not found: {root}")
    pki_dir = tempfile.mkdtemp(prefix="dcnios-door-")
    atexit.register(shutil.rmtree, pki_dir, ignore_errors=True)
    pki = make_pki(Path(pki_dir), "127.0.0.1")
    try:
        emulator = DCacheEmulator(
            {args.user: _password()},
            port=args.port,
            files_root=root,
            webdav_tls=(str(pki.cert), str(pki.key)),
        )
    except OSError as exc:
        raise _listen_error(args.port, exc) from exc
    stop = StopFlag().install()
    with emulator, DirectoryEvents(emulator, root):
        sys.stdout.write(
            f"sandbox dCache: events API {emulator.endpoint}, "
            f"WebDAV {emulator.endpoint.removesuffix('/api/v1')}/ and https://{emulator.webdav_door}/ "
            f"(CA {pki.ca})\n"
            f"  root {root} is '/'; user {args.user}; Ctrl-C stops\n"
        )
        sys.stdout.flush()
        stop.wait()
    return EXIT_OK


def _run_oscar(args: argparse.Namespace) -> int:
    from dcnios.sandbox.oscar import OscarEmulator
    from dcnios.sandbox.supervisor import JobRunner, ScriptService, WebdavDoor

    services: dict[str, ScriptService] = {}
    for item in args.service:
        name, sep, script = item.partition("=")
        if not sep or not name or not script:
            raise ConfigError(f"--service: expected NAME=SCRIPT, got {item!r}")
        if not os.path.isfile(script):
            raise ConfigError(f"--service {name}: script not found: {script}")
        services[name] = ScriptService(name, os.path.abspath(script), args.input_path)
    webdav = None
    if args.webdav:
        if not args.webdav_ca:
            raise ConfigError("--webdav-ca: needed with --webdav (the door's CA bundle)")
        webdav = WebdavDoor(args.webdav, args.webdav_user, _password(), os.path.abspath(args.webdav_ca))
    runner = JobRunner(services, os.path.abspath(args.output), webdav=webdav, workers=args.workers)
    try:
        emulator = OscarEmulator(admin=(args.user, _password()), port=args.port, executor=runner)
    except OSError as exc:
        raise _listen_error(args.port, exc) from exc
    stop = StopFlag().install()
    with emulator:
        sys.stdout.write(f"sandbox OSCAR on {emulator.endpoint}; outputs in {os.path.abspath(args.output)}\n")
        for name in services:
            emulator.add_service(name, input_path=args.input_path)
            sys.stdout.write(f"  service {name}: POST {emulator.endpoint}/job/{name}\n")
        sys.stdout.write(
            "  service tokens: GET /system/services/NAME as the admin user (a consumer with "
            "oscar.username/password does this itself)\n"
        )
        sys.stdout.flush()
        stop.wait()
    runner.shutdown(wait=False)
    return EXIT_OK
