"""A worker channel of BreakerPubSubChannelLayer, written by one process and read by another.

Two real processes (``tests/channels/pubsub_workerproc.py``) on a real
redis-server, sharing the host-wide breaker, across refused, hung (SIGSTOP),
blackhole and restart-empty faults. Pub/sub keeps nothing in Redis: the
sender keeps what it could not publish and publishes it, in order, once a
subscriber hears it. A publish that failed after it may have reached Redis (a
read timeout) is never published again and is counted (``uncertain``): the
consumer gets every message at most once, in order, and every message it
misses is one of those counted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from redis_breaker import _shared
from tests.harness import RedisServer
from tests.harness.hostproc import REPO_ROOT
from tests.harness.server import wait_until

from .test_worker_channels import COUNT, DEADLINE, DURING, FAULTS, INTERVAL, _lines


class PubSubPair:
    """A sender and a consumer process of one worker channel."""

    def __init__(self, server: RedisServer, work: Path, channel: str) -> None:
        self.server = server
        self.channel = channel
        self.control = work / "control"
        self.control.mkdir()
        self.sent_log = work / "send.jsonl"
        self.got_log = work / "receive.jsonl"
        self.procs: list[subprocess.Popen[bytes]] = []
        (self.control / "pause").touch()  # until the consumer has subscribed
        state_dir = _shared.default_state_dir()
        for role, out in (("receive", self.got_log), ("send", self.sent_log)):
            with open(work / f"{role}.err", "wb") as err:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "tests.channels.pubsub_workerproc", role,
                     "--url", server.url, "--state-dir", state_dir, "--channel", channel,
                     "--out", str(out), "--control", str(self.control), "--count", str(COUNT),
                     "--interval", str(INTERVAL)],
                    cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stderr=err))

    def subscribed(self) -> bool:
        client = self.server.client()
        try:
            return bool(client.pubsub_numsub(self.channel)[0][1])
        finally:
            client.close()

    def sent(self) -> list[int]:
        return [int(e["sent"]) for e in _lines(self.sent_log) if "sent" in e]  # type: ignore[call-overload]

    def raised(self) -> list[dict[str, object]]:
        return [e for e in _lines(self.sent_log) if "raised" in e]

    def got(self) -> list[int]:
        return [int(e["got"]) for e in _lines(self.got_log) if "got" in e]  # type: ignore[call-overload]

    def uncertain(self) -> int:
        counts = [int(e["uncertain"]) for e in _lines(self.sent_log) if "uncertain" in e]  # type: ignore[call-overload]
        return counts[-1] if counts else 0

    def pending(self) -> int:
        counts = [int(e["pending"]) for e in _lines(self.sent_log) if "pending" in e]  # type: ignore[call-overload]
        return counts[-1] if counts else 0

    def states(self) -> list[str]:
        return [str(e["state"]) for e in _lines(self.sent_log) if "state" in e]

    def done(self) -> bool:
        return any("done" in e for e in _lines(self.sent_log))

    def pause(self, on: bool) -> None:
        path = self.control / "pause"
        if on:
            path.touch()
        elif path.exists():
            path.unlink()

    def explain(self) -> str:
        got = self.got()
        missing = sorted(set(range(COUNT)) - set(got))
        errors = "".join(f"\n{p.name}:\n{p.read_text()[-3000:]}"
                         for p in sorted(self.control.parent.glob("*.err")))
        return (f"got {len(got)} of {COUNT}; missing {missing[:20]}; uncertain "
                f"{self.uncertain()}; pending {self.pending()}; received {got}{errors}")

    def close(self) -> None:
        (self.control / "exit").touch()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def make_pair(tmp_path: Path) -> Iterator[object]:
    pairs: list[PubSubPair] = []

    def make(server: RedisServer) -> PubSubPair:
        pair = PubSubPair(server, tmp_path, "thumbnails")
        pairs.append(pair)
        return pair

    yield make
    for pair in pairs:
        pair.close()


@pytest.mark.parametrize("fault", FAULTS)
def test_pubsub_worker_channel_across_a_fault(fault: str, make_pair: object) -> None:
    """Every message reaches the consumer at most once and in order; none is lost uncounted."""
    if fault == "blackhole":
        ok, why = RedisServer.can_blackhole()
        if not ok:
            pytest.skip(why)
    server = RedisServer(netns=fault == "blackhole").start()
    try:
        pair: PubSubPair = make_pair(server)  # type: ignore[operator]
        assert wait_until(pair.subscribed, DEADLINE), pair.explain()
        pair.pause(False)
        assert wait_until(lambda: len(pair.got()) >= 20, DEADLINE), pair.explain()
        before = len(pair.sent()) + len(pair.raised())
        if fault == "refused":
            server.stop(save=True)
        elif fault == "hung":
            server.freeze()
        elif fault == "blackhole":
            server.blackhole()
        else:
            server.kill()
        assert wait_until(lambda: len(pair.sent()) + len(pair.raised()) >= before + DURING
                          and pair.pending() > 0, DEADLINE), pair.explain()
        if fault == "refused":
            server.start()
        elif fault == "hung":
            server.thaw()
        elif fault == "blackhole":
            server.unblackhole()
        else:
            server.restart(empty=True)
        assert wait_until(pair.done, DEADLINE), pair.explain()
        assert pair.raised() == []
        assert pair.sent() == list(range(COUNT))

        def settled() -> bool:
            return pair.pending() == 0 and len(pair.got()) + pair.uncertain() >= COUNT

        assert wait_until(settled, DEADLINE), pair.explain()
        wait_until(lambda: len(pair.got()) > COUNT, 1.0)  # a late duplicate would show
        got = pair.got()
        assert got == sorted(set(got)), pair.explain()  # in order, each once
        missing = set(range(COUNT)) - set(got)
        assert len(missing) <= pair.uncertain(), pair.explain()
        if fault in ("refused", "restart-empty"):
            assert got == list(range(COUNT)), pair.explain()
    finally:
        server.close()
