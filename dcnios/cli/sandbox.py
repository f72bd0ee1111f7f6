"""`dcnios sandbox dcache|oscar`: local stand-ins for trying a pipeline before touching production."""

from __future__ import annotations

import argparse
import errno
import os
import sys

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
        help="the dCache events API, namespace listing and WebDAV GET over a local directory",
        description="Serve /api/v1/events (SSE channels, inotify subscriptions), /api/v1/namespace "
        "and a read-only WebDAV door over DIR, which is the namespace root '/'. Files copied, moved "
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
        help="the OSCAR API; each job runs a local script as OSCAR's supervisor would",
        description="Serve the OSCAR manager API (/job, /run, /system/services, /system/logs). Each "
        "accepted job runs SCRIPT in a bounded pool with $EVENT set to the body; for a dCache "
        "event the file is first fetched from --webdav into $INPUT_FILE_PATH; files written to "
        "$TMP_OUTPUT_DIR are collected into OUTPUT/<service>/. ",
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
        "--webdav", metavar="URL", help="dCache WebDAV door for input files, e.g. http://127.0.0.1:3880"
    )
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

    root = os.path.abspath(args.root)
    if not os.path.isdir(root):
        raise ConfigError(f"--root: directory not found: {root}")
    try:
        emulator = DCacheEmulator({args.user: _password()}, port=args.port, files_root=root)
    except OSError as exc:
        raise _listen_error(args.port, exc) from exc
    stop = StopFlag().install()
    with emulator, DirectoryEvents(emulator, root):
        sys.stdout.write(
            f"sandbox dCache: events API {emulator.endpoint}, "
            f"WebDAV {emulator.endpoint.removesuffix('/api/v1')}/\n"
            f"  root {root} is '/'; user {args.user}; Ctrl-C stops\n"
        )
        sys.stdout.flush()
        stop.wait()
    return EXIT_OK


def _run_oscar(args: argparse.Namespace) -> int:
    from dcnios.sandbox.oscar import OscarEmulator
    from dcnios.sandbox.supervisor import JobRunner, ScriptService

    services: dict[str, ScriptService] = {}
    for item in args.service:
        name, sep, script = item.partition("=")
        if not sep or not name or not script:
            raise ConfigError(f"--service: expected NAME=SCRIPT, got {item!r}")
        if not os.path.isfile(script):
            raise ConfigError(f"--service {name}: script not found: {script}")
        services[name] = ScriptService(name, os.path.abspath(script), args.input_path)
    runner = JobRunner(services, os.path.abspath(args.output), webdav=args.webdav, workers=args.workers)
    try:
        emulator = OscarEmulator(admin=(args.user, _password()), port=args.port, executor=runner)
    except OSError as exc:
        raise _listen_error(args.port, exc) from exc
    stop = StopFlag().install()
    with emulator:
        sys.stdout.write(f"sandbox OSCAR on {emulator.endpoint}; outputs in {os.path.abspath(args.output)}\n")
        for name in services:
            emulator.add_service(name)
            sys.stdout.write(f"  service {name}: POST {emulator.endpoint}/job/{name}\n")
        sys.stdout.write(
            "  service tokens: GET /system/services/NAME as the admin user (a consumer with "
            "oscar.username/password does this itself)\n"
        )
        sys.stdout.flush()
        stop.wait()
    runner.shutdown(wait=False)
    return EXIT_OK
