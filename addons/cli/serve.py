"""`aigw serve`, `aigw web` (in the foreground or detached), `aigw wait` and `aigw stop`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from addons.app import runtime
from addons.cli.common import command, fail
from addons.settings.config import Settings
from addons.settings.home import HOME_HINT
from addons.settings.loader import PROPAGATE_WITHOUT_OTEL


def register(sub: Any) -> None:
    for name, help in (("serve", "run the gateway (headless)"), ("web", "run the gateway under the mitmweb UI")):
        p = command(sub, name, cmd_serve, help=help, description=help)
        p.set_defaults(web=name == "web")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="set a mitmproxy option (repeatable), e.g. --set termlog_verbosity=debug")
        p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on the console")
        p.add_argument("--workers", dest="aibridge_workers", metavar="N",
                       help="gateway processes on the listener, or auto (one per CPU); same as --aibridge-workers")
        p.add_argument("--detach", action="store_true",
                       help="run in the background (output to aigw.log in the home); return once it is ready")
    for name, func, help in (
        ("wait", cmd_wait, "wait until the gateway of this home answers /healthz"),
        ("stop", cmd_stop, "stop the gateway of this home (it drains in-flight requests first)"),
    ):
        command(sub, name, func, help=help, description=help).add_argument(
            "--timeout", type=float, default=60, metavar="SECONDS")


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    if args.detach:
        return serve_detached(args, settings)
    from addons.app.serve import run_gateway

    return run_gateway(settings, sets=args.set, web=args.web, quiet=args.quiet)


def serve_detached(args: argparse.Namespace, settings: Settings) -> int:
    """Start `aigw serve` in the background, output to the home's aigw.log; return once /healthz answers."""
    import subprocess

    # The gateway's own warnings go to its log: say them here too, where the user is looking.
    for warning in [*settings.unknown_variables,
                    *([PROPAGATE_WITHOUT_OTEL] if settings.otel_propagate_upstream and not settings.otel else [])]:
        print(f"aigw: warning: {warning}", file=sys.stderr)
    running = runtime.read(settings.db)
    if running is not None:
        fail(f"a gateway already runs for {settings.db} at {running.url} (pid {running.pid}); stop it with aigw stop")
    log_file = settings.home.log_file
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        out = os.fdopen(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
    except OSError as e:
        fail(f"cannot write {log_file}: {e.strerror or e} (home {settings.home.path}: {settings.home.reason})")
    with out:
        start = log_file.stat().st_size
        # -P: not the current directory first on sys.path, where an `addons` package of the user's
        # project (or anyone's) would run instead of aigw.
        child = subprocess.Popen([sys.executable, "-P", "-m", "addons", *(a for a in args.argv if a != "--detach")],
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)  # survives the shell that started it
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if child.poll() is not None:
            with open(log_file, "rb") as f:
                f.seek(start)
                lines = f.read().decode(errors="replace").strip().splitlines()
            fail(f"the gateway exited at start ({lines[-1] if lines else f'exit code {child.returncode}'}); "
                 f"log: {log_file}")
        gateway = runtime.read(settings.db)
        if gateway is not None and gateway.pid == child.pid and runtime.healthy(gateway):
            print(f"aigw: gateway running at {gateway.url} (pid {child.pid}); log: {log_file}; stop: aigw stop")
            return 0
        time.sleep(0.1)
    fail(f"the gateway (pid {child.pid}) is not ready after 60 s; log: {log_file}")
    return 1


def cmd_wait(args: argparse.Namespace, settings: Settings) -> int:
    deadline = time.monotonic() + args.timeout
    while True:
        gateway = runtime.read(settings.db)
        if gateway is not None and runtime.healthy(gateway):
            print(f"aigw: gateway ready at {gateway.url}")
            return 0
        if time.monotonic() > deadline:
            fail(f"no gateway ready within {args.timeout:g} s (a running one writes "
                 f"{runtime.runtime_path(settings.db)}; home {settings.home.path}: {settings.home.reason})")
        time.sleep(0.2)


def cmd_stop(args: argparse.Namespace, settings: Settings) -> int:
    import signal

    gateway = runtime.read(settings.db)
    if gateway is None:
        fail(f"no gateway runs for {settings.db} (home {settings.home.path}: {settings.home.reason}); "
             f"point elsewhere with {HOME_HINT}")
    assert gateway is not None
    # The pid could have been reused since a crash: stop it only if it answers with this run's admin token.
    try:
        runtime.call(gateway, "GET", "/api/v2/aibridge/keys", timeout=5)
    except runtime.GatewayApiError:
        fail(f"pid {gateway.pid} does not answer as the gateway at {gateway.url}; not stopping it "
             f"(remove {runtime.runtime_path(settings.db)} if it is stale)")
    try:
        os.kill(gateway.pid, signal.SIGTERM)
    except PermissionError:
        fail(f"the gateway (pid {gateway.pid}) belongs to another user; stop it as that user")
    deadline = time.monotonic() + args.timeout
    while runtime.read(settings.db) is not None:
        if time.monotonic() > deadline:
            fail(f"the gateway (pid {gateway.pid}) is still draining after {args.timeout:g} s")
        time.sleep(0.1)
    print(f"aigw: stopped the gateway at {gateway.url} (pid {gateway.pid})")
    return 0
