"""A worker channel written by one process and read by another, across real Redis faults.

Two real processes (``tests/channels/workerproc.py``) on a real redis-server,
sharing the host-wide breaker: the sender keeps sending through the fault,
and the consumer must get every message once, in order.
"""

from __future__ import annotations

import json
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

COUNT = 150
INTERVAL = 0.02
#: Sends made while Redis is away, at least.
DURING = 40
DEADLINE = 90.0

FAULTS = ["refused", "hung", "blackhole", "restart-empty"]


def _lines(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue  # a line being written
    return found


class Pair:
    """A sender and a consumer process of one worker channel."""

    def __init__(self, server: RedisServer, work: Path, channel: str) -> None:
        self.control = work / "control"
        self.control.mkdir()
        self.sent_log = work / "send.jsonl"
        self.got_log = work / "receive.jsonl"
        self.procs: list[subprocess.Popen[bytes]] = []
        state_dir = _shared.default_state_dir()
        for role, out in (("receive", self.got_log), ("send", self.sent_log)):
            if role == "send":
                (self.control / "pause").touch()  # until the consumer is up
            with open(work / f"{role}.err", "wb") as err:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "tests.channels.workerproc", role, "--url", server.url,
                     "--state-dir", state_dir, "--channel", channel, "--out", str(out),
                     "--control", str(self.control), "--count", str(COUNT),
                     "--interval", str(INTERVAL)],
                    cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                    stderr=err))

    def sent(self) -> list[int]:
        return [int(e["sent"]) for e in _lines(self.sent_log) if "sent" in e]  # type: ignore[call-overload]

    def raised(self) -> list[dict[str, object]]:
        return [e for e in _lines(self.sent_log) if "raised" in e]

    def got(self) -> list[int]:
        return [int(e["got"]) for e in _lines(self.got_log) if "got" in e]  # type: ignore[call-overload]

    def states(self) -> list[str]:
        return [str(e["state"]) for e in _lines(self.sent_log) if "state" in e]

    def paused(self) -> bool:
        """The sender saw the pause and sends nothing until it ends."""
        lines = _lines(self.sent_log)
        return any("paused" in e for e in lines) and "paused" in [
            k for e in lines for k in e if k in ("paused", "sent", "raised")][-1]

    def done(self) -> bool:
        return any("done" in e for e in _lines(self.sent_log))

    def pause(self, on: bool) -> None:
        path = self.control / "pause"
        if on:
            path.touch()
        elif path.exists():
            path.unlink()

    def explain(self) -> str:
        """What the processes logged, for a failure's message (pytest's folders rotate)."""
        got = self.got()
        missing = sorted(set(range(COUNT)) - set(got))
        errors = "".join(f"\n{p.name}:\n{p.read_text()[-3000:]}"
                         for p in sorted(self.control.parent.glob("*.err")))
        sent = _lines(self.sent_log)
        # Every send but the plain ones that Redis took: kept ones, raised ones, pauses.
        sends = [e for e in sent if "pending" not in e and set(e) != {"sent"}]
        last = [e for e in sent if "pending" in e][-1:]
        duplicates = [e for e in _lines(self.got_log) if "duplicates" in e][-1:]
        return (f"got {len(got)} of {COUNT}; missing {missing[:20]}; received {got}; "
                f"sender {sends}; sender's last report {last}; consumer's dropped second "
                f"copies {duplicates}{errors}")

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
    pairs: list[Pair] = []

    def make(server: RedisServer) -> Pair:
        pair = Pair(server, tmp_path, "thumbnails")
        pairs.append(pair)
        return pair

    yield make
    for pair in pairs:
        pair.close()


@pytest.mark.parametrize("fault", FAULTS)
def test_worker_channel_loses_nothing_across_a_fault(fault: str, make_pair: object,
                                                     tmp_path: Path) -> None:
    """Every message sent before, during and after the fault is received once, in order."""
    if fault == "blackhole":
        ok, why = RedisServer.can_blackhole()
        if not ok:
            pytest.skip(why)
    server = RedisServer(netns=fault == "blackhole").start()
    try:
        pair: Pair = make_pair(server)  # type: ignore[operator]
        # The consumer is up (and reading) once the first message comes through.
        pair.pause(False)
        assert wait_until(lambda: len(pair.got()) >= 20, DEADLINE), (pair.sent(), pair.got())
        # The cut comes between two messages, the consumer's pop waiting on an empty queue:
        # no send is answered while its message's pop is (one server pass runs both, and
        # writes their replies after it), a window no client closes (docs/channels.md).
        # And restart-empty loses what Redis holds: the consumer takes it all first.
        pair.pause(True)
        assert wait_until(lambda: pair.paused() and pair.got() == pair.sent(), DEADLINE)
        before = len(pair.sent()) + len(pair.raised())
        if fault == "refused":
            server.stop(save=True)
        elif fault == "hung":
            server.freeze()
        elif fault == "blackhole":
            server.blackhole()
        else:
            server.kill()
        pair.pause(False)
        # Sends go on through the outage, and the breaker opens.
        assert wait_until(lambda: len(pair.sent()) + len(pair.raised()) >= before + DURING
                          and "open" in pair.states(), DEADLINE), pair.states()[-5:]
        assert wait_until(lambda: any(int(e.get("pending", 0)) > 0  # type: ignore[call-overload]
                                      for e in _lines(pair.sent_log)), DEADLINE)
        if fault == "refused":
            server.start()
        elif fault == "hung":
            server.thaw()
        elif fault == "blackhole":
            server.unblackhole()
        else:
            server.restart(empty=True)
        assert wait_until(pair.done, DEADLINE)
        assert wait_until(lambda: len(pair.got()) >= COUNT, DEADLINE), pair.explain()
        assert pair.raised() == []
        assert pair.sent() == list(range(COUNT))
        # One more moment for a late duplicate to show.
        wait_until(lambda: len(pair.got()) > COUNT, 1.0)
        assert pair.got() == list(range(COUNT)), pair.explain()
    finally:
        server.close()


async def test_a_send_that_ran_after_a_thaw_is_received_once(redis_server: RedisServer) -> None:
    """A send that timed out on a frozen server is served locally; the copy Redis runs on thawing is dropped."""
    import asyncio

    from redis_breaker.channels import BreakerChannelLayer, metrics

    from .conftest import fast_breaker, hosts

    layer = BreakerChannelLayer(hosts(redis_server), breaker=fast_breaker("thaw"))
    try:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "warm"})  # a pooled connection, nothing to connect
        assert await asyncio.wait_for(layer.receive(channel), 5) == {"type": "warm"}
        await layer.redis.wait_received()  # every pooled connection idle: the send is written
        dropped = metrics.counts().get((layer.breaker.name, "duplicate"), 0)
        redis_server.freeze()
        await layer.send(channel, {"type": "once"})  # written, then timed out
        assert layer.breaker.stats().fallback_calls >= 1
        redis_server.thaw()
        probe = redis_server.client()
        key = "asgi" + layer.redis.non_local_name(channel)
        # The frozen server ran the send once it thawed: a copy waits in Redis too.
        assert wait_until(lambda: probe.zcard(key) == 1, 10)
        probe.close()
        assert await asyncio.wait_for(layer.receive(channel), 10) == {"type": "once"}
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(layer.receive(channel), 2)
        assert layer.duplicates == 1  # Redis's copy, popped and dropped
        assert metrics.counts()[(layer.breaker.name, "duplicate")] == dropped + 1
    finally:
        layer.breaker.reset()
        await layer.close()
