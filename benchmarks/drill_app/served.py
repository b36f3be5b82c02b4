"""The protected stack served by N gunicorn worker processes, as a contestant of the drill.

``drill.py --processes N`` starts ``gunicorn --preload -w N -k gthread`` on the
drill's project (``drill_app.wsgi``) against the same Redis; this contestant's
traffic goes to it over HTTP. Every response names the worker's pid, the
breaker's state when the view began and the time spent in the view; each
worker writes its breaker's transitions to ``DIR/<pid>.jsonl`` (``views.py``).
The breaker's state is the host's: the report shows how many calls paid for
discovering an outage in each process and on the host, and when each process
served its first call through Redis again.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import hidden
from .contestants import Contestant

NAME = "redis-breaker-http"
#: The pages: a cache read then write, a task dispatch, a group_send.
PATHS = {"cache.page": ("GET", "/cache/"), "task.delay": ("POST", "/task/"),
         "group_send": ("POST", "/group-send/")}
MIX = ["cache.page"] * 6 + ["group_send"] * 2 + ["task.delay"]


class HttpError(Exception):
    """A response other than 200: an error reached the client."""


class Served:
    """The gunicorn master and its workers, and what their responses said."""

    def __init__(self, processes: int, port: int, env: dict[str, str], cwd: Path,
                 events: Path, log: Path) -> None:
        self.port = port
        self.events = events
        events.mkdir(parents=True, exist_ok=True)
        for old in events.glob("*.jsonl"):  # a previous run's workers
            old.unlink()
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--preload", "--workers", str(processes),
             "--worker-class", "gthread", "--threads", "4", "--bind", f"127.0.0.1:{port}",
             "--timeout", "120", "--graceful-timeout", "3", "--log-level", "warning",
             "drill_app.wsgi:application"],
            cwd=cwd, env=dict(env, DRILL_EVENTS_DIR=str(events)), stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True)
        #: (start on the drill's clock, op, pid, view seconds, breaker state when the view began)
        self.responses: list[tuple[float, str, int, float, str]] = []

    def request(self, op: str, n: int) -> dict[str, Any]:
        # A connection per request, so that the requests spread over the workers
        # (a kept-alive connection stays with the worker that accepted it).
        method, path = PATHS[op]
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, f"{path}?n={n}", headers={"Connection": "close"})
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise HttpError(f"HTTP {response.status}")
        answer: dict[str, Any] = json.loads(body)
        return answer

    def ready(self) -> bool:
        try:
            self.request("cache.page", 0)
        except (OSError, http.client.HTTPException, HttpError):
            return False
        return True

    def pids(self) -> set[int]:
        return {int(p.stem) for p in self.events.glob("*.jsonl")}

    def transitions(self, wall0: float) -> list[dict[str, Any]]:
        """Every worker's transitions, their times put on the drill's clock (``wall0``: its 0)."""
        found = []
        for path in sorted(self.events.glob("*.jsonl")):
            for line in path.read_text().splitlines():
                event = json.loads(line)
                event["at"] = event.pop("t") - wall0
                found.append(event)
        return sorted(found, key=lambda e: e["at"])

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


def contestant(served: Served, now: Any) -> Contestant:
    """Cache reads, task dispatch and group_send through the served project."""
    player = Contestant(NAME, mix=MIX)

    def call(op: str) -> Any:
        def run(n: int) -> None:
            start = now()
            answer = served.request(op, n)
            before, after = str(answer["breaker_before"]), str(answer["breaker_after"])
            served.responses.append((start, op, int(answer["pid"]), float(answer["elapsed"]),
                                     before))
            if before != "closed" or after != "closed":
                hidden.mark()  # the view's Redis calls were (or ended up) served by fallbacks
            if op == "task.delay":
                player.remember(str(answer["task_id"]))
        return run

    for op in PATHS:
        player.sync_ops[op] = call(op)
    return player

