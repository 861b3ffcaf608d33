"""`aigw report`, `aigw snapshot`, `aigw prices missing` and `aigw migrate`: what is made of the
recorded data, and moving it into a DuckLake."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from addons.app import runtime
from addons.cli.common import command, dump_json, fail, read_store, with_store
from addons.cli.table import render_table
from addons.settings import config
from addons.settings.config import Settings


def register(sub: Any) -> None:
    help = "move an embedded DuckDB database into a DuckLake (docs/SCALING.md)"
    p = command(sub, "migrate", cmd_migrate, help=help, description=help)
    p.add_argument("--from", dest="migrate_from", required=True, metavar="FILE", help="the aibridge.duckdb file")
    p.add_argument("--to", dest="migrate_to", required=True, metavar="ducklake:postgres:…",
                   help="an empty DuckLake: ducklake:postgres:dbname=aigw host=… user=…")
    p.add_argument("--data-path", dest="migrate_data_path", required=True, metavar="DIR|s3://…",
                   help="where the lake keeps its data files")
    help = "refresh the read-only snapshot that external tools open"
    command(sub, "snapshot", cmd_snapshot, help=help, description=help)
    help = "write a self-contained HTML usage report"
    p = command(sub, "report", cmd_report, help=help, description=help)
    p.add_argument("--since", default="30d", help="a duration (30d, 12h) or an ISO date (default 30d)")
    p.add_argument("--out", required=True, metavar="FILE.html")
    prices = sub.add_parser("prices", help="model prices").add_subparsers(metavar="ACTION")
    command(prices, "missing", cmd_prices_missing,
            help="models seen without a known price (their cost is NULL)").add_argument("--json", action="store_true")


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from addons.store import lake
    from addons.store.migrate import MigrateError, migrate

    if not args.migrate_to.startswith(config.LAKE_PREFIX + "postgres:"):
        fail(f"--to must name a DuckLake with its catalog in PostgreSQL: {config.LAKE_PREFIX}postgres:dbname=… host=…")
    target = config.LakeSettings(args.migrate_to, args.migrate_data_path, settings.s3_endpoint)
    try:
        copied = migrate(Path(args.migrate_from).expanduser(), target)
    except (MigrateError, lake.LakeError) as e:
        fail(lake.redact(str(e)))
    for table, n in copied.items():
        print(f"{table}: {n}")
    print(f"migrated {args.migrate_from} into {lake.describe(target)}; point the gateway at it with "
          "CODER_AIBRIDGE_DB and CODER_AIBRIDGE_DATA_PATH")
    return 0


def cmd_snapshot(args: argparse.Namespace, settings: Settings) -> int:
    from addons.chain.analytics import snapshot_dir
    from addons.store.snapshot import write_snapshot

    path = with_store(settings, lambda gw: runtime.call(gw, "POST", "/api/v2/aibridge/admin/snapshot")["snapshot"],
                      lambda conn: write_snapshot(conn, snapshot_dir(settings)))
    print(f"snapshot written: {path}")
    return 0


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import UTC, datetime
    from urllib.parse import quote

    from addons.reports.filters import parse_since
    from addons.reports.html import render_report

    def local(conn: Any) -> str:
        now = datetime.now(UTC)
        return render_report(conn, parse_since(args.since, now), now)

    html = read_store(settings, lambda gw: runtime.call(
        gw, "GET", f"/api/v2/aibridge/admin/report?since={quote(args.since)}")["html"], local)
    Path(args.out).write_text(html, encoding="utf-8")
    print(f"report written: {args.out}")
    return 0


def cmd_prices_missing(args: argparse.Namespace, settings: Settings) -> int:
    from addons.pricing.queries import missing_prices

    rows = read_store(settings, lambda gw: runtime.call(gw, "GET", "/api/v2/aibridge/admin/prices/missing")["missing"],
                      missing_prices)
    if args.json:
        print(dump_json(rows))
    elif not rows:
        print("every model seen has a price")
    else:
        columns = list(rows[0])
        print(render_table(columns, [[r[c] for c in columns] for r in rows]))
        print(price_hint(settings, rows[0]))
    return 0


def price_hint(settings: Settings, row: dict[str, Any]) -> str:
    entry = f"- {{provider: {row['provider']}, model: {row['model']}, input: 3.00, output: 15.00}}"
    if settings.prices_file == config.DEFAULT_PRICES_FILE:
        where = (f"config/prices.yaml (in a checkout; it is {config.DEFAULT_PRICES_FILE}), or to your own copy "
                 "named by --aibridge-prices-file FILE or CODER_AIBRIDGE_PRICES_FILE")
    else:
        where = str(settings.prices_file)
    return (f"To price a model, add an entry such as `{entry}` (USD per 1M tokens) to {where}, then restart "
            "the gateway.")
