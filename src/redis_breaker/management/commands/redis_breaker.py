"""``manage.py redis_breaker status [--json]`` and ``drain`` (with the Celery outbox)."""

from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from redis_breaker.health import celery_outbox, get_redis_status

_COLUMNS = ("breaker", "state", "since", "failures", "latency_ms", "last transition",
            "last_error")


class Command(BaseCommand):
    help = "Inspect redis-breaker: `status` shows every breaker; `drain` publishes the outbox."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", metavar="{status,drain}")
        sub.required = True
        status = sub.add_parser("status", help="state of every breaker (and the outbox)")
        status.add_argument("--json", action="store_true", help="print JSON instead of a table")
        status.add_argument("--timeout", type=float, default=0.2, help="PING timeout (s)")
        drain = sub.add_parser("drain", help="publish the Celery outbox now")
        drain.add_argument("--loop", action="store_true", help="keep draining until stopped")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "status":
            self._status(options)
        elif action == "drain":
            self._drain(options)

    def _status(self, options: dict[str, Any]) -> None:
        report = get_redis_status(timeout=options["timeout"])
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=2, sort_keys=True))
            return
        rows = [_COLUMNS]
        for name, b in report["breakers"].items():
            latency = "-" if b["latency_ms"] is None else f"{b['latency_ms']:.2f}"
            last = b.get("last_transition")
            transition = "-" if last is None else (
                f"{last['from']}->{last['to']} at {last['at']} ({last['reason']})")
            rows.append((name, b["state"], b["since"], str(b["failures"]), latency, transition,
                         b["last_error"] or "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS) - 1)]
        for row in rows:
            cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
            self.stdout.write("  ".join([*cells, row[-1]]).rstrip())
        if len(rows) == 1:
            self.stdout.write("(no breakers configured or in use)")
        outbox = report.get("outbox")
        if outbox is not None:
            counts = ", ".join(f"{k}={v}" for k, v in sorted(outbox.items()))
            self.stdout.write(f"outbox: {counts}")

    def _drain(self, options: dict[str, Any]) -> None:
        outbox = celery_outbox()
        if outbox is None:
            raise CommandError(
                "drain needs the Celery outbox (redis_breaker.outbox, Celery installed).")
        result = outbox.drain(loop=options["loop"])
        self.stdout.write(json.dumps(result, indent=2, sort_keys=True, default=str))
