"""`aigw config check`, `aigw ca` and `aigw env`: checking the configuration, and what a client
machine needs to trust and reach the gateway."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from addons.app import runtime
from addons.cli.common import command, dump_json, fail, missing_state
from addons.settings.config import Settings
from addons.settings.instances import DEFAULT_BEDROCK_MODEL, DEFAULT_BEDROCK_SMALL_FAST_MODEL
from addons.settings.loader import PROPAGATE_WITHOUT_OTEL


def register(sub: Any) -> None:
    help = "print the gateway CA certificate's path, or write a bundle with the system roots"
    p = command(sub, "ca", cmd_ca, help=help, description=help)
    p.add_argument("--bundle", metavar="FILE", help="write the system/certifi roots plus the gateway CA to FILE "
                   "(for SSL_CERT_FILE / REQUESTS_CA_BUNDLE, which replace the default roots)")
    p.add_argument("--init", action="store_true", help="create the CA in the home if there is none yet "
                   "(the gateway does so on first start)")
    help = "print the shell exports a client needs to use the transparent proxy"
    p = command(sub, "env", cmd_env, help=help, description=help)
    p.add_argument("--user-key", metavar="KEY", help="your gateway key (the proxy password)")
    p.add_argument("--bundle", metavar="FILE", help="also write the roots + gateway CA bundle to FILE and export "
                   "SSL_CERT_FILE / REQUESTS_CA_BUNDLE pointing at it")
    cfg = sub.add_parser("config", help="configuration").add_subparsers(metavar="ACTION")
    command(cfg, "check", cmd_config_check, help="validate configuration and print the provider instances")


# -- config ----------------------------------------------------------------------


def bedrock_model_text(model: str, default: str) -> str:
    return f"{model} (Coder's default)" if model == default else model


def cmd_config_check(args: argparse.Namespace, settings: Settings) -> int:
    from addons.app import ca

    print(f"configuration OK ({len(settings.instances)} provider instance(s))")
    for warning in settings.unknown_variables:
        print(f"warning: {warning}")
    if settings.otel_propagate_upstream and not settings.otel:
        print(f"warning: {PROPAGATE_WITHOUT_OTEL}")
    home = settings.home
    print(f"home: {home.path} ({home.reason})")
    where = f"set by {settings.db_origin}" if settings.db_origin else "in the home"
    if settings.lake is not None:
        from addons.store.lake import describe

        print(f"database: DuckLake {describe(settings.lake)}; this replica's spool and state in {settings.db.parent}")
    else:
        print(f"database: {settings.db} ({where}; {'exists' if settings.db.exists() else 'aigw serve creates it'})")
    cert = home.certs_dir / ca.CERT_FILE
    print(f"CA: {cert} ({'exists' if cert.exists() else 'aigw serve creates it'})")
    print(f"prices: {settings.prices_file}")
    gateway = runtime.read(settings.db)
    print(f"gateway: running at {gateway.url} (pid {gateway.pid})" if gateway else "gateway: not running")
    print(f"listen: {settings.listen_host}:{settings.listen_port}   "
          f"enabled: {settings.enabled}   allow_byok: {settings.allow_byok}")
    for instance in settings.instances:
        print(dump_json(instance.masked(), indent=None))
        if instance.bedrock is not None:
            model = bedrock_model_text(instance.bedrock.model, DEFAULT_BEDROCK_MODEL)
            small = bedrock_model_text(instance.bedrock.small_fast_model, DEFAULT_BEDROCK_SMALL_FAST_MODEL)
            print(f"{instance.name}: Bedrock model {model}, small-fast model {small}")
    from addons.chain.proxy_policy import build_host_map, describe_host_map

    print("\n".join(describe_host_map(build_host_map(settings))))
    return 0


# -- ca / env --------------------------------------------------------------------


def existing_ca(settings: Settings) -> Path:
    """The home's CA directory; stops with one line when the gateway has not created the CA yet."""
    from addons.app import ca

    confdir = settings.home.certs_dir
    if not (confdir / ca.CERT_FILE).is_file():
        fail(missing_state("CA", confdir / ca.CERT_FILE, settings) + " (or create it now: aigw ca --init)")
    return confdir


def write_bundle(dest: str, confdir: Path) -> Path:
    from addons.app import ca

    path, count = ca.write_bundle(Path(dest), confdir)
    print(f"aigw: wrote {path}: {count} certificates (system roots + the gateway CA)", file=sys.stderr)
    return path


def cmd_ca(args: argparse.Namespace, settings: Settings) -> int:
    from addons.app import ca

    confdir = settings.home.certs_dir
    cert = ca.ensure_ca(confdir) if args.init else existing_ca(settings) / ca.CERT_FILE
    print(write_bundle(args.bundle, confdir) if args.bundle else cert.resolve())
    return 0


def cmd_env(args: argparse.Namespace, settings: Settings) -> int:
    from addons.app import ca

    confdir = existing_ca(settings)
    bundle = write_bundle(args.bundle, confdir) if args.bundle else None
    gateway = runtime.read(settings.db)
    if gateway is not None:
        address = ca.address_of(gateway.url)
    else:
        address = ca.reachable_address(settings.listen_host, settings.listen_port)
        print(f"# No gateway runs for {settings.db}: this is the configured address.")
    print(ca.env_exports(settings, args.user_key, address, confdir, bundle))
    return 0
