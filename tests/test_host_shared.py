"""Host-wide breaker state with real processes and a real redis-server (issue 11).

The workers are separate Python processes (``tests/harness/hostproc.py``) that
share one breaker through its state file, as the processes of a gunicorn or
Celery host do. Redis really hangs (SIGSTOP), refuses or comes back; nothing
is mocked. The machine may be small and busy: the tests assert counts and
causality (what happened before what, on the one monotonic clock of the host),
and wait for liveness with generous bounds. How fast it all is belongs to the
benchmarks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from redis_breaker import BreakerConfig, State
from tests.harness import RedisServer, free_port
from tests.harness.hostproc import REPO_ROOT, Fleet, StateView, fleet_of, status_command

#: BreakerConfig's default: consecutive failures that open the breaker.
THRESHOLD = BreakerConfig().failure_threshold
#: A call that failed after waiting at least this long paid (about) a full 0.5 s timeout.
SLOW_S = 0.4
WORKERS = 8
#: Liveness bounds: a loaded two-core machine is slow, these are not timing claims.
LIVENESS = 30.0

Call = list[Any]  # [start, duration, outcome, error]


# ---------------------------------------------------------------- helpers
def wait_ready(fleet: Fleet, count: int, pids: set[int] | None = None) -> dict[int, dict[str, Any]]:
    def ready() -> dict[int, dict[str, Any]]:
        found = fleet.last("ready")
        return {pid: r for pid, r in found.items() if pids is None or pid in pids}

    fleet.wait(lambda: len(ready()) >= count, f"{count} processes to be ready", 60.0)
    found = ready()
    assert len(found) == count, found
    return found


def every(fleet: Fleet, pids: set[int], kind: str, test: Callable[[dict[str, Any]], bool]) -> bool:
    """True when the latest ``kind`` line of every process in ``pids`` passes ``test``."""
    last = fleet.last(kind)
    return all(pid in last and test(last[pid]) for pid in pids)


def rejected_since(fleet: Fleet, pids: set[int], since: float, count: int) -> bool:
    """True when every process in ``pids`` had ``count`` calls rejected after ``since``
    (counted between its ticks stamped after ``since``)."""
    ticks = fleet.of_kind("tick")
    for pid in pids:
        after = [t for t in ticks.get(pid, []) if t["t"] > since]
        if len(after) < 2 or after[-1]["rejected"] - after[0]["rejected"] < count:
            return False
    return True


def wait_for_trip(view: StateView, generation: int, timeout: float = LIVENESS) -> float:
    """Watch the state file's hot word; return when (monotonic) the trip was first seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if view.hot_generation != generation:
            return time.monotonic()
        time.sleep(0.002)
    pytest.fail(f"the state file did not leave generation {generation} within {timeout}s")


def calls_by_pid(fleet: Fleet, pids: set[int]) -> dict[int, list[Call]]:
    lines = fleet.last("calls")
    return {pid: lines[pid]["calls"] for pid in pids}


def changes(fleet: Fleet, pids: set[int], to: str) -> dict[int, list[dict[str, Any]]]:
    found = fleet.of_kind("change")
    return {pid: [c for c in found.get(pid, []) if c["to"] == to] for pid in pids}


def heard(fleet: Fleet, pids: set[int], to: str) -> bool:
    return all(cs for cs in changes(fleet, pids, to).values())


def slow_failures(calls: list[Call]) -> list[Call]:
    return [c for c in calls if c[2] == "failed" and c[1] >= SLOW_S]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def traffic_fleet(fleet: Fleet, server: RedisServer, count: int, *options: str,
                  **config: Any) -> dict[int, dict[str, Any]]:
    """``count`` workers calling Redis through the breaker; returns once every one has
    had 20 calls succeed."""
    for _ in range(count):
        fleet.spawn("worker", {"url": server.url, **config}, "--traffic", *options)
    ready = wait_ready(fleet, count)
    fleet.wait(lambda: every(fleet, set(ready), "tick", lambda t: t["ok"] >= 20),
               "every worker's calls to succeed")
    return ready


def one_state_file(ready: dict[int, dict[str, Any]], fleet: Fleet) -> str:
    files = {r["state_file"] for r in ready.values()}
    assert all(r["host_shared"] for r in ready.values()), ready
    assert len(files) == 1, files
    state_file = files.pop()
    assert state_file is not None
    assert Path(state_file).parent == fleet.state_dir
    return str(state_file)


def assert_rejected_after(calls: dict[int, list[Call]], visible: float) -> None:
    """Every call that started once the trip was in the state file was rejected, in every
    process (calls started earlier were in flight: any outcome)."""
    for pid, mine in calls.items():
        after = [c for c in mine if c[0] > visible]
        assert after, f"worker {pid} made no call after the trip"
        admitted = [c for c in after if c[2] != "rejected"]
        assert admitted == [], (
            f"worker {pid}: {len(admitted)} calls started after the trip was visible "
            f"(t={visible:.3f}) were admitted: {admitted[:5]}")


def assert_failures_are_redis_errors(calls: dict[int, list[Call]]) -> None:
    errors = {c[3] for mine in calls.values() for c in mine if c[2] == "failed"}
    assert errors <= {"TimeoutError", "ConnectionError"}, errors


def final_calls_succeed(fleet: Fleet, pids: set[int]) -> None:
    fleet.command("final")
    fleet.wait(lambda: all(pid in fleet.last("final") for pid in pids), "the final calls")
    finals = fleet.last("final")
    assert {pid: finals[pid]["outcome"] for pid in pids} == dict.fromkeys(pids, "ok"), finals


def close_cleanly(fleet: Fleet) -> None:
    codes = fleet.close()
    assert all(code in (0, -9) for code in codes), (codes, fleet.log_tail())


def assert_logged_once(fleet: Fleet, pids: set[int], transitions: list[tuple[str, str]]) -> None:
    """Each transition was logged (breaker_state_changed) by one process of the host, the
    one that made it, however many heard of it."""
    byes = fleet.last("bye")
    logged = {pid: [(x["from"], x["to"]) for x in byes[pid]["logged"]] for pid in pids}
    for transition in transitions:
        by = [pid for pid, xs in logged.items() if transition in xs]
        assert len(by) == 1, f"{transition} logged by {by}: {logged}"


# ------------------------------------------------------------------ tests
@pytest.mark.timeout(240)
def test_processes_of_a_host_pay_one_onset_and_recover_together(
        redis_server: RedisServer, tmp_path: Path) -> None:
    """8 processes, Redis hangs: the host pays one onset, then every process rejects, a
    fresh process's status says open; Redis back: every process hears the close with no
    traffic of its own, one process made it."""
    with fleet_of(tmp_path) as fleet:
        ready = traffic_fleet(fleet, redis_server, WORKERS)
        pids = set(ready)
        state_file = one_state_file(ready, fleet)
        view = StateView(state_file)
        try:
            generation = view.hot_generation
            redis_server.freeze()
            visible = wait_for_trip(view, generation)
            assert view.state is State.OPEN
            fleet.wait(lambda: rejected_since(fleet, pids, visible, 5),
                       "every worker to be rejected")

            # A process that never called Redis knows: the state is the host's.
            report = status_command(tmp_path, {fleet.name: {
                "URL": redis_server.url, "STATE_DIR": str(fleet.state_dir)}})
            assert report["breakers"][fleet.name]["state"] == "open", report
            assert report["healthy"] is False

            fleet.command("quiet")
            fleet.wait(lambda: all(p in fleet.last("calls") for p in pids), "the call logs")
            calls = calls_by_pid(fleet, pids)
            slow = [c for mine in calls.values() for c in slow_failures(mine)]
            print(f"\n{sum(map(len, calls.values()))} calls, {len(slow)} paid a timeout; "
                  f"per worker {[len(slow_failures(m)) for m in calls.values()]}")
            # One onset for the host: the failures that trip it, plus at most one call
            # in flight in every process.
            assert THRESHOLD <= len(slow) <= THRESHOLD + WORKERS
            assert_rejected_after(calls, visible)
            assert_failures_are_redis_errors(calls)
            trips = changes(fleet, pids, "open")
            assert all(trips.values()), f"a worker's listener missed the trip: {trips}"
            made = [pid for pid, cs in trips.items() if any(not c["remote"] for c in cs)]
            assert len(made) == 1, f"the trip was made by {made}, not by one process"

            thawed = time.monotonic()
            redis_server.thaw()
            fleet.wait(lambda: heard(fleet, pids, "closed"),
                       "every worker's listener to hear the close")
            closes = changes(fleet, pids, "closed")
            local = [c for cs in closes.values() for c in cs if not c["remote"]]
            assert len(local) == 1, closes
            assert local[0]["at"] >= thawed
            assert all(c["t"] >= thawed for cs in closes.values() for c in cs)
            assert view.state is State.CLOSED
            assert all(len(cs) == 1 for cs in closes.values()), closes
        finally:
            view.close()
        final_calls_succeed(fleet, pids)
        close_cleanly(fleet)
        assert_logged_once(fleet, pids, [("closed", "open"), ("half_open", "closed")])


@pytest.mark.timeout(240)
def test_without_host_sharing_every_process_pays_its_own_onset(
        redis_server: RedisServer, tmp_path: Path) -> None:
    """HOST_SHARED False: no state file; each process trips on its own timeouts and
    recovers on its own probe; a fresh process knows nothing of the outage."""
    with fleet_of(tmp_path) as fleet:
        ready = traffic_fleet(fleet, redis_server, WORKERS, host_shared=False)
        pids = set(ready)
        assert all(not r["host_shared"] and r["state_file"] is None for r in ready.values())
        assert list(fleet.state_dir.iterdir()) == []
        redis_server.freeze()
        fleet.wait(lambda: every(fleet, pids, "tick",
                                 lambda t: t["state"] == "open" and t["rejected"] >= 5),
                   "every worker to trip and reject", 60.0)
        report = status_command(tmp_path, {fleet.name: {
            "URL": redis_server.url, "STATE_DIR": str(fleet.state_dir), "HOST_SHARED": False}})
        entry = report["breakers"][fleet.name]
        assert entry["state"] == "closed", report  # its own breaker: one PING, timed out
        assert entry["latency_ms"] is None
        fleet.command("quiet")
        fleet.wait(lambda: all(p in fleet.last("calls") for p in pids), "the call logs")
        calls = calls_by_pid(fleet, pids)
        paid = {pid: len(slow_failures(mine)) for pid, mine in calls.items()}
        print(f"\ntimeouts paid per worker: {sorted(paid.values())}, total {sum(paid.values())}")
        assert all(n >= THRESHOLD for n in paid.values()), paid
        assert sum(paid.values()) > THRESHOLD + WORKERS
        assert_failures_are_redis_errors(calls)
        trips = changes(fleet, pids, "open")
        assert all(cs and not any(c["remote"] for c in cs) for cs in trips.values()), trips

        thawed = time.monotonic()
        redis_server.thaw()
        fleet.wait(lambda: heard(fleet, pids, "closed"), "every worker to close", 60.0)
        closes = changes(fleet, pids, "closed")
        assert all(not c["remote"] and c["at"] >= thawed for cs in closes.values() for c in cs)
        assert list(fleet.state_dir.iterdir()) == []
        final_calls_succeed(fleet, pids)
        close_cleanly(fleet)


@pytest.mark.timeout(180)
def test_the_probe_lease_moves_when_its_holder_is_killed(
        redis_server: RedisServer, tmp_path: Path) -> None:
    """SIGKILL the process whose probe watches Redis for the host: another live process
    takes the lease, and the breaker still closes once Redis is back."""
    with fleet_of(tmp_path) as fleet:
        ready = traffic_fleet(fleet, redis_server, 4, "--stats")
        pids = set(ready)
        view = StateView(one_state_file(ready, fleet))
        try:
            generation = view.hot_generation
            redis_server.freeze()
            visible = wait_for_trip(view, generation)
            fleet.wait(lambda: rejected_since(fleet, pids, visible, 3),
                       "every worker to be rejected")
            fleet.command("quiet")
            alive_pids = set(pids)

            def probe_pid(after: float) -> int | None:
                """The pid every live worker's stats().probe_pid names (in a tick stamped
                after ``after``), if they agree on one."""
                ticks = fleet.last("tick")
                named = {ticks[p]["probe_pid"] if ticks[p]["t"] > after else None
                         for p in ticks if p in alive_pids}
                return named.pop() if len(named) == 1 else None

            holder = fleet.value(lambda: probe_pid(visible),
                                 "every worker's stats() to name one probe process")
            assert holder in pids, (holder, pids)
            (process,) = [p for p in fleet.processes if p.pid == holder]
            process.kill()
            process.wait(10)
            killed = time.monotonic()  # reaped: no zombie answers os.kill(pid, 0) any more
            alive_pids.discard(holder)
            successor = fleet.value(lambda: probe_pid(killed),
                                    "another process to take the probe lease")
            assert successor != holder
            assert successor in alive_pids
            assert alive(successor)
            assert view.lease_pid in alive_pids
            print(f"\nprobe lease: {holder} (killed) -> {successor}")

            thawed = time.monotonic()
            redis_server.thaw()
            fleet.wait(lambda: heard(fleet, alive_pids, "closed"), "the survivors to close")
            closes = changes(fleet, alive_pids, "closed")
            local = [c for cs in closes.values() for c in cs if not c["remote"]]
            assert len(local) == 1, closes
            assert local[0]["at"] >= thawed
            assert view.state is State.CLOSED
        finally:
            view.close()
        final_calls_succeed(fleet, alive_pids)
        close_cleanly(fleet)


@pytest.mark.timeout(240)
def test_preforked_children_share_the_parents_breaker(
        redis_server: RedisServer, tmp_path: Path) -> None:
    """gunicorn --preload: the breaker is created and attached in the parent, the children
    are forked from it. A trip in the children is the parent's and every child's; each
    child locks the file on its own (no deadlock), every one hears the close."""
    children = 3
    with fleet_of(tmp_path) as fleet:
        fleet.spawn("preload", {"url": redis_server.url}, "--children", str(children))
        ready = wait_ready(fleet, children + 1)
        (parent,) = [pid for pid, r in ready.items() if r["role"] == "parent"]
        kids = {pid for pid, r in ready.items() if r["role"] == "child"}
        assert all(ready[k]["ppid"] == parent for k in kids)
        state_file = one_state_file(ready, fleet)
        fleet.wait(lambda: every(fleet, kids, "tick", lambda t: t["ok"] >= 20),
                   "the children's calls to succeed")
        view = StateView(state_file)
        try:
            generation = view.hot_generation
            redis_server.freeze()
            visible = wait_for_trip(view, generation)
            fleet.wait(lambda: rejected_since(fleet, kids, visible, 5),
                       "every child to be rejected")
            fleet.wait(lambda: every(fleet, {parent}, "tick",
                                     lambda t: t["t"] > visible and t["state"] == "open"),
                       "the parent to see the trip")
            fleet.command("quiet")
            fleet.wait(lambda: all(p in fleet.last("calls") for p in kids), "the call logs")
            calls = calls_by_pid(fleet, kids)
            slow = [c for mine in calls.values() for c in slow_failures(mine)]
            assert THRESHOLD <= len(slow) <= THRESHOLD + children, len(slow)
            assert_rejected_after(calls, visible)
            assert_failures_are_redis_errors(calls)
            made = [pid for pid, cs in changes(fleet, kids | {parent}, "open").items()
                    if any(not c["remote"] for c in cs)]
            assert len(made) == 1, made
            assert made[0] in kids

            thawed = time.monotonic()
            redis_server.thaw()
            fleet.wait(lambda: heard(fleet, kids, "closed"), "every child to hear the close")
            fleet.wait(lambda: every(fleet, {parent}, "tick",
                                     lambda t: t["t"] > thawed and t["state"] == "closed"),
                       "the parent to see the close")
            local = [c for cs in changes(fleet, kids, "closed").values() for c in cs
                     if not c["remote"]]
            assert len(local) == 1, local
            assert local[0]["at"] >= thawed
            # The parent only read the state: it caught up, and its listeners heard both.
            fleet.wait(lambda: heard(fleet, {parent}, "closed"), "the parent's listener")
            assert [(c["to"], c["remote"]) for c in fleet.of_kind("change")[parent]
                    if c["to"] in ("open", "closed")] == [("open", True), ("closed", True)]
        finally:
            view.close()
        final_calls_succeed(fleet, kids | {parent})
        codes = fleet.close()
        assert codes == [0], fleet.log_tail()
        (reaped,) = fleet.of_kind("children")[parent]
        assert sorted(reaped["codes"].values()) == [0] * children
        assert_logged_once(fleet, kids | {parent}, [("closed", "open"), ("half_open", "closed")])


def run_role(role: str, config: dict[str, Any], *options: str,
             timeout: float = 120.0) -> list[dict[str, Any]]:
    """Run a self-contained hostproc role; its stdout's JSON lines."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.harness.hostproc", role, "--config", json.dumps(config),
         *options], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{role} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.mark.timeout(180)
def test_forked_children_lock_the_state_file_against_each_other(
        redis_server: RedisServer, tmp_path: Path) -> None:
    """A parent and four children forked after it attached, two threads each, record
    failures at once: each child's flock is its own (no deadlock, every process ends) and
    excludes the others (the shared count loses no update)."""
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    lines = run_role("count", {"url": redis_server.url, "state_dir": str(state_dir)},
                     "--children", "4", "--threads", "2", "--calls", "200",
                     "--dead-url", f"redis://127.0.0.1:{free_port()}/0")
    *kids, parent = lines
    assert len(kids) == 4, lines
    assert parent["codes"] == [0, 0, 0, 0]
    assert all(k["refused"] == 2 * 200 and k["host_shared"] for k in kids), kids
    assert {k["state_file"] for k in kids} == {parent["state_file"]}
    assert parent["host_shared"]
    assert parent["refused"] == 2 * 200
    assert parent["consecutive"] == parent["expected"] == 5 * 2 * 200, parent
    assert parent["expected"] < parent["threshold"]


@pytest.mark.timeout(180)
def test_a_prefork_pool_shares_the_masters_breaker(
        redis_server: RedisServer, tmp_path: Path) -> None:
    """Celery prefork in miniature (multiprocessing, fork): the master configures the breaker,
    the pool processes inherit it. One trips it: the others, the master and a pool process
    forked while it is open are rejected; the master's reset reopens it for all."""
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    # A long open interval: the probe finds Redis healthy, but the trial traffic waits
    # for the master's reset.
    config = {"url": redis_server.url, "state_dir": str(state_dir), "failure_threshold": 3,
              "reset_timeout": 60.0, "max_reset_timeout": 60.0}
    (report,) = run_role("pool", config, "--children", "3",
                         "--dead-url", f"redis://127.0.0.1:{free_port()}/0")
    state_file = report["state_file"]
    assert report["host_shared"]
    assert state_file
    seen = [*report["before"], report["trip"], *report["others"], report["forked_while_open"],
            *report["after_reset"]]
    assert all(s["host_shared"] and s["state_file"] == state_file for s in seen), seen
    assert len({s["pid"] for s in seen} | {report["parent"]}) == 5
    assert [s["outcome"] for s in report["before"]] == ["ok"] * 3
    assert report["trip"]["failed"] == 3
    assert report["trip"]["then"] == "rejected"
    assert report["parent_after_trip"] == "open"
    assert [(s["outcome"], s["state"]) for s in report["others"]] == [("rejected", "open")] * 2
    assert report["forked_while_open"]["outcome"] == "rejected"
    assert [(s["outcome"], s["state"]) for s in report["after_reset"]] == [("ok", "closed")] * 4
    assert report["codes"] == [0, 0, 0, 0]


@pytest.mark.timeout(180)
def test_new_processes_recover_a_stale_open_state_file(
        redis_server: RedisServer, tmp_path: Path) -> None:
    """The app server's workers die (SIGKILL) while the breaker is open: the file stays
    open, its probe lease held by a dead process. Redis comes back, new processes start:
    they find it open, one takes the probe and closes it, with no traffic at all."""
    with fleet_of(tmp_path) as fleet:
        ready = traffic_fleet(fleet, redis_server, 3)
        view = StateView(one_state_file(ready, fleet))
        try:
            generation = view.hot_generation
            redis_server.stop()
            wait_for_trip(view, generation)
            fleet.wait(lambda: every(fleet, set(ready), "tick", lambda t: t["rejected"] >= 3),
                       "the workers to be rejected")
            fleet.wait(lambda: view.lease_pid in ready, "a worker's probe to take the lease")
            for process in fleet.processes:
                process.kill()
                process.wait(10)
            assert view.state is State.OPEN
            stale_holder = view.lease_pid
            assert stale_holder in ready
            assert not alive(stale_holder)

            restarted = time.monotonic()
            redis_server.start()
            for _ in range(3):
                fleet.spawn("worker", {"url": redis_server.url}, "--wait-go")
            fleet.wait(lambda: len(set(fleet.last("waiting")) - set(ready)) == 3,
                       "the new processes to start")
            assert view.state is State.OPEN  # nobody alive has touched it
            fleet.command("go")
            new = set(fleet.last("waiting")) - set(ready)
            wait_ready(fleet, 3, new)

            def closed_for(pid: int) -> bool:
                return fleet.last("ready")[pid]["state"] == "closed" or bool(
                    changes(fleet, {pid}, "closed")[pid])

            fleet.wait(lambda: all(closed_for(p) for p in new), "every new process to close")
            # What each found when it attached: the change its listener heard then
            # (from this process's initial closed to the record's state), or none.
            first = {pid: (fleet.of_kind("change")[pid] or [None])[0] for pid in new}
            attached_open = {pid: c["to"] for pid, c in first.items()
                             if c is not None and c["from"] == "closed" and c["remote"]}
            print(f"\nnew processes found the record {sorted(attached_open.values())}, "
                  f"{3 - len(attached_open)} found it closed")
            # The first to attach found the stale record as the dead processes left it.
            assert "open" in attached_open.values(), first
            closes = changes(fleet, new, "closed")
            for pid in attached_open:
                assert closes[pid], f"{pid} found the breaker open, never heard the close"
            local = [(pid, c) for pid, cs in closes.items() for c in cs if not c["remote"]]
            assert len(local) == 1, closes
            closer, close = local[0]
            assert closer in new
            assert close["at"] >= restarted
            for pid in new - set(attached_open):
                # Found it closed: it attached after the close.
                assert fleet.last("ready")[pid]["t"] >= close["at"]
            assert view.state is State.CLOSED
            assert view.lease_pid in new
            fleet.wait(lambda: not view.lease_held, "the closer to give the probe lease back")
        finally:
            view.close()
        final_calls_succeed(fleet, new)
        codes = fleet.close()
        assert codes == [-9, -9, -9, 0, 0, 0], (codes, fleet.log_tail())
