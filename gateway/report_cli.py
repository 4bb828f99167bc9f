"""``gateway report processing``: the record of processing activities (GDPR Art. 30).

::

    gateway report processing [--format md|html|json] [--output FILE] [--since DATE]

Built from the config and the transfer log (gateway.privacy.processing) each time it is asked
for, so it says what the gateway does now rather than what someone once wrote down.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from gateway.audit_cli import record
from gateway.cli_db import open_database
from gateway.config import GatewayConfig
from gateway.privacy import processing
from gateway.privacy.report_render import to_html, to_markdown


def add_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="reports for a DPO: the record of processing activities")
    p.add_argument("report", choices=["processing"])
    p.add_argument("--config", "-c", metavar="FILE", help="TOML config file")
    p.add_argument("--format", choices=["md", "html", "json"], default="md")
    p.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")
    p.add_argument(
        "--since", metavar="DATE", help="count transfers from this ISO date (default: all logged)"
    )


def render(config: GatewayConfig, conn: Any, fmt: str, since: str | None) -> str:
    data = processing.build_record(config, conn, since=since)
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    doc = processing.document(data)
    return to_html(doc) if fmt == "html" else to_markdown(doc)


def run(config: GatewayConfig, args: argparse.Namespace) -> int:
    with open_database(config, migrate=True) as db:
        text = render(config, db.conn, args.format, args.since)
        record(
            db,
            action="report.processing",
            target=f"file:{Path(args.output).name}" if args.output else None,
            detail={"format": args.format},
        )
    if args.output:
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        print(f"record of processing activities written to {args.output}")
    else:
        print(text, end="")
    return 0
