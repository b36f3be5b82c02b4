"""The outage drill: a small Django project under concurrent traffic while Redis is cut.

    python benchmarks/drill.py [--duration S] [--concurrency N] [--faults refused,hung,blackhole]
                               [--out DIR]

(`nox -s drill` installs what it needs and runs this.) It starts a real
redis-server (inside a network namespace when root, so it can also be
blackholed) and a real Celery worker, then runs the same traffic — cache reads
and writes, task dispatch, group_send — through redis-breaker and, side by
side in the same run, through the unprotected stack (Django's RedisCache,
django-redis with IGNORE_EXCEPTIONS, plain Celery, plain channels_redis) and
through hand-written wrappers guarded by pybreaker. For each fault it runs a
healthy phase, cuts Redis, and restores it.

Output: a table per fault and phase, DIR/report.json, a PNG timeline per
fault, and DIR/index.html showing both.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import RedisServer, free_port, wait_until  # noqa: E402
from drill_app import hidden  # noqa: E402

FAULTS = ("refused", "hung", "blackhole")
PHASES = ("healthy", "outage", "recovery")
# A realistic mix: mostly cache reads, some writes, a task now and then.
SYNC_MIX = ["cache.get"] * 6 + ["cache.set"] * 2 + ["task.delay"]


def log(message: str) -> None:
    print(message, flush=True)


@dataclass
class Run:
    """Everything recorded during the drill."""

    started: float = field(default_factory=time.perf_counter)
    #: ``time.time()`` when ``started`` was read (the served workers stamp wall-clock times)
    wall0: float = field(default_factory=time.time)
    #: (contestant, op, start, duration, error seen by the caller, error hidden by the backend)
    samples: list[tuple[str, str, float, float, bool, bool]] = field(default_factory=list)
    phases: list[dict[str, Any]] = field(default_factory=list)
    #: redis-breaker's shared breaker: (time, new state)
    transitions: list[tuple[float, str]] = field(default_factory=list)
    #: pybreaker's breaker: (time, new state)
    pybreaker_transitions: list[tuple[float, str]] = field(default_factory=list)
    #: each error a caller saw: (contestant, op, start, the exception and its text, cut short)
    error_texts: list[tuple[str, str, float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    #: each time the Celery worker ended while the drill ran: (time, exit code, its last CRITICAL)
    worker_deaths: list[tuple[float, int, str]] = field(default_factory=list)

    def now(self) -> float:
        return time.perf_counter() - self.started

    def record(self, contestant: str, op: str, start: float, duration: float, error: bool,
               hidden: bool = False) -> None:
        self.samples.append((contestant, op, start, duration, error, hidden))


# --------------------------------------------------------------------- traffic
def sync_worker(run: Run, contestant: Any, index: int, pace: float) -> None:
    ops = [op for op in (contestant.mix or SYNC_MIX) if op in contestant.sync_ops]
    counter = itertools.count(index * 1_000_000)
    box = hidden.start()
    for op in itertools.cycle(ops[index % len(ops):] + ops[:index % len(ops)]):
        if run.stop.is_set():
            return
        start = run.now()
        error = False
        before = box[0]
        try:
            contestant.sync_ops[op](next(counter))
        except Exception as exc:
            error = True
            run.error_texts.append((contestant.name, op, start, f"{type(exc).__name__}: {exc}"[:200]))
        duration = run.now() - start
        run.record(contestant.name, op, start, duration, error, box[0] > before)
        time.sleep(max(0.0, pace - duration))


async def async_worker(run: Run, contestant: Any, index: int, pace: float) -> None:
    counter = itertools.count(index * 1_000_000)
    box = hidden.start()  # this task's own context
    while not run.stop.is_set():
        for op, fn in contestant.async_ops.items():
            start = run.now()
            error = False
            before = box[0]
            try:
                await fn(next(counter))
            except Exception as exc:
                error = True
                run.error_texts.append((contestant.name, op, start,
                                   f"{type(exc).__name__}: {exc}"[:200]))
            duration = run.now() - start
            run.record(contestant.name, op, start, duration, error, box[0] > before)
            await asyncio.sleep(max(0.0, pace - duration))


async def receiver(run: Run, layer: Any, received: dict[str, int], name: str) -> None:
    """This process's member of the group: counts what group_send delivers."""
    from drill_app.contestants import GROUP

    channel = None
    while not run.stop.is_set():
        try:
            if channel is None:
                channel = await layer.new_channel()
                await layer.group_add(GROUP, channel)
            await asyncio.wait_for(layer.receive(channel), timeout=1.0)
            received[name] = received.get(name, 0) + 1
        except asyncio.TimeoutError:
            continue
        except Exception:  # plain channels_redis raises while Redis is down
            await asyncio.sleep(0.1)


class LoopThread:
    """An asyncio event loop in a thread of its own."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(self._unhandled)
        self.name = name
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"loop-{name}",
                                       daemon=True)
        self.thread.start()

    def _unhandled(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # One line naming the contestant instead of asyncio's traceback: channels_redis
        # starts a task after each receive() that pops the message's backup copy
        # (_clean_receive_backup) and never awaits it; when Redis is cut at that moment
        # its error is "never retrieved" (see docs/drill.md).
        task = context.get("future") or context.get("task")
        coro = getattr(task, "get_coro", lambda: None)()
        what = getattr(coro, "__qualname__", None) or repr(task)
        error = context.get("exception")
        log(f"[{self.name} event loop] {context.get('message')}: {what}: "
            f"{type(error).__name__ if error else ''}: {error}")

    def submit(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


# ---------------------------------------------------------------------- faults
def inject(server: RedisServer, fault: str) -> None:
    if fault == "refused":
        server.stop(save=True)
    elif fault == "hung":
        server.freeze()
    else:
        server.blackhole()


def restore(server: RedisServer, fault: str) -> None:
    if fault == "refused":
        server.start()
    elif fault == "hung":
        server.thaw()
    else:
        server.unblackhole()


def start_worker(env: dict[str, str], out: Path) -> subprocess.Popen[bytes]:
    log_file = (out / "celery-worker.log").open("ab")  # a restarted worker's log goes after
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "drill_app.celery_app", "worker", "--pool=solo",
         "-Q", "drill", "--loglevel=WARNING", "--without-heartbeat", "--without-gossip",
         "--without-mingle"],
        cwd=HERE, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)


class Supervisor:
    """Starts the Celery worker again when it ends while the drill runs, as systemd would.

    A worker can die in an outage by no fault of the code under test (kombu 5.7.0 was
    seen to stop with "Unrecoverable error" while its broker connection was torn
    down); left dead, every contestant's later tasks would count as lost. Each death
    is logged and reported with the last CRITICAL line of the worker's log.
    """

    def __init__(self, run: Run, env: dict[str, str], out: Path) -> None:
        self.run, self.env, self.out = run, env, out
        self.worker = start_worker(env, out)
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="drill-supervisor",
                                        daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(0.5):
            with self._lock:
                code = self.worker.poll()
                if code is None or self._done.is_set():
                    continue
                critical = [line for line in (self.out / "celery-worker.log").read_text(
                    errors="replace").splitlines() if "CRITICAL" in line]
                last = critical[-1] if critical else ""
                self.run.worker_deaths.append((self.run.now(), code, last))
                log(f"the Celery worker ended (exit code {code}): {last or 'no CRITICAL line'}; "
                    "started again")
                self.worker = start_worker(self.env, self.out)

    def stop(self) -> None:
        self._done.set()
        with self._lock:
            worker = self.worker
        worker.terminate()
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()


def where_in_broker(client: Any, task_id: str) -> str:
    """Where a task that never ran is in the broker: its queue, kombu's unacked index, or nowhere."""
    needle = task_id.encode()
    if any(needle in item for item in client.lrange("drill", 0, -1)):
        return "queue"
    if any(needle in item for item in client.hvals("unacked")):
        return "unacked"
    return "nowhere"


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase (10)")
    parser.add_argument("--concurrency", type=int, default=2,
                        help="traffic workers per contestant and kind of operation (2)")
    parser.add_argument("--pace", type=float, default=0.02,
                        help="seconds between one worker's operations (0.02)")
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"comma-separated, from {', '.join(FAULTS)}")
    parser.add_argument("--out", type=Path, default=Path("drill-out"), help="output folder")
    parser.add_argument("--processes", type=int, default=0,
                        help="also serve the protected stack from N gunicorn worker processes "
                             "and send it the same traffic over HTTP (0: off)")
    args = parser.parse_args(argv)
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        parser.error(f"unknown fault(s): {', '.join(unknown)}")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    can_blackhole, why = RedisServer.can_blackhole()
    skipped: dict[str, str] = {}
    if "blackhole" in faults and not can_blackhole:
        skipped["blackhole"] = why
        faults.remove("blackhole")
        log(f"blackhole skipped: {why}")

    ledger = RedisServer().start()
    server = RedisServer(netns=can_blackhole).start()
    worker: Supervisor | None = None
    loops: dict[str, LoopThread] = {}
    served: Any = None
    run = Run()
    try:
        env = dict(os.environ, DRILL_REDIS_URL=server.url, DRILL_LEDGER_URL=ledger.url,
                   PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
        os.environ.update(DRILL_REDIS_URL=server.url, DRILL_LEDGER_URL=ledger.url)
        database = str(out / "drill.sqlite3")
        for suffix in ("", "-wal", "-shm"):
            Path(database + suffix).unlink(missing_ok=True)
        import django
        from django.conf import settings

        from drill_app.settings import SOCKET_TIMEOUT, build

        settings.configure(**build(server.url, database))
        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)

        from drill_app import contestants as contestant_module
        from drill_app.celery_app import plain
        from redis_breaker import get_breaker

        breaker = get_breaker("drill")
        hidden.wrap_breaker(breaker)
        breaker.add_listener(lambda change: run.transitions.append(
            (run.now(), change.to_state.value)))

        log(f"redis-server {server.host}:{server.port} ({'network namespace' if can_blackhole else 'loopback'}), "
            f"ledger {ledger.host}:{ledger.port}, socket_timeout={SOCKET_TIMEOUT}s for every contestant")
        (out / "celery-worker.log").unlink(missing_ok=True)
        worker = Supervisor(run, env, out)
        warmup = plain.delay(-1).id
        ledger_client = ledger.client()
        if not wait_until(lambda: ledger_client.hexists("executed:celery", warmup), 60, 0.2):
            raise RuntimeError(f"the Celery worker did not start; see {out / 'celery-worker.log'}")
        ledger_client.delete("executed:celery")

        hidden.install()
        from django.db.models.signals import post_save

        from redis_breaker.models import OutboxMessage

        post_save.connect(hidden.on_outbox_row, sender=OutboxMessage, weak=False)
        players = contestant_module.build(
            lambda name: loops[name].loop,
            lambda state: run.pybreaker_transitions.append((run.now(), state)))
        if args.processes > 0:
            from drill_app import served as served_module

            # Same Redis, same database (the outbox) and the host's breaker state.
            served = served_module.Served(
                args.processes, free_port(), dict(env, DRILL_DATABASE=database), HERE,
                out / "events", out / "gunicorn.log")
            if not wait_until(served.ready, 120, 0.2):
                raise RuntimeError(f"gunicorn did not answer; see {out / 'gunicorn.log'}")
            players.append(served_module.contestant(served, run.now))
            log(f"gunicorn: {args.processes} worker processes on port {served.port}")
        for contestant in players:
            if contestant.async_ops:
                loops[contestant.name] = LoopThread(contestant.name)
        from channels.layers import get_channel_layer

        received: dict[str, int] = {}
        for contestant in players:
            if contestant.layer:
                loops[contestant.name].submit(receiver(run, get_channel_layer(contestant.layer),
                                                       received, contestant.name))
        threads = []
        for contestant in players:
            for i in range(args.concurrency if contestant.sync_ops else 0):
                t = threading.Thread(target=sync_worker, args=(run, contestant, i, args.pace),
                                     name=f"{contestant.name}-{i}", daemon=True)
                t.start()
                threads.append(t)
            for i in range(args.concurrency if contestant.async_ops else 0):
                loops[contestant.name].submit(async_worker(run, contestant, i, args.pace))

        current = {"fault": "-", "phase": "-", "start": run.now()}

        def progress() -> None:
            while not run.stop.wait(2.0):
                elapsed = run.now() - current["start"]
                ours = [s for s in run.samples[-5000:] if s[0] == "redis-breaker"]
                log(f"  [{current['fault']:>9} {current['phase']:>8} {elapsed:5.1f}/{args.duration:g}s] "
                    f"breaker={breaker.state.value:<9} calls={len(run.samples):>7} "
                    f"redis-breaker errors={sum(1 for s in ours if s[4])}")

        threading.Thread(target=progress, daemon=True).start()

        def phase(fault: str, name: str) -> None:
            current.update(fault=fault, phase=name, start=run.now())
            start = run.now()
            time.sleep(args.duration)
            run.phases.append({"fault": fault, "phase": name, "start": start, "end": run.now()})

        for fault in faults:
            log(f"\n== {fault}")
            phase(fault, "healthy")
            # Both sides of each fault action are stamped: stopping a server that
            # saves its data takes a while, and the breaker may open before it returns.
            began = run.now()
            inject(server, fault)
            run.phases.append({"fault": fault, "phase": "cut", "start": began, "end": run.now()})
            phase(fault, "outage")
            began = run.now()
            restore(server, fault)
            run.phases.append({"fault": fault, "phase": "restored", "start": began,
                               "end": run.now()})
            phase(fault, "recovery")

        log("\nstopping traffic (calls still blocked in Redis finish first)")
        run.stop.set()
        for t in threads:
            t.join(300)
        blocked = [t.name for t in threads if t.is_alive()]

        log("waiting for the outbox to drain and the worker to run every task")
        from redis_breaker.outbox import outbox_status

        wait_until(lambda: (outbox_status().get("pending") or 0) == 0, 120, 0.2)
        # the ledger's hash of each contestant's task: the served stack runs the same task
        names = {"redis-breaker": "redis-breaker", "celery": "celery", "pybreaker": "pybreaker",
                 "redis-breaker-http": "redis-breaker"}
        expected = {c.name: set(c.task_ids) for c in players if c.name in names}

        def executed(name: str) -> dict[str, int]:
            return {k.decode(): int(v)
                    for k, v in ledger_client.hgetall(f"executed:{names[name]}").items()}

        for name in ("redis-breaker", "redis-breaker-http"):
            if name in expected:
                wait_until(lambda name=name: expected[name] <= set(executed(name)), 120, 0.5)
        time.sleep(2)  # let the last of the plain tasks land too

        from drill_report import summarize, write_outputs

        tasks = {}
        dispatches = {}
        broker = server.client()
        for contestant in players:
            if contestant.name not in expected:
                continue
            ids = expected[contestant.name]
            ran = {task_id: n for task_id, n in executed(contestant.name).items() if task_id in ids}
            tasks[contestant.name] = {
                "dispatched": len(ids),
                "executed": len(ran),
                "lost": len(ids - set(ran)),
                "duplicates": sum(max(0, n - 1) for n in ran.values()),
                # the first lost ones, with when delay() was called (drill clock), to look for them
                "lost_ids": [{"task_id": task_id, "dispatched_at": round(
                    contestant.task_times[task_id] - run.started, 3),
                    "in_broker": where_in_broker(broker, task_id)}
                    for task_id in sorted(ids - set(ran))[:20]],
            }
            # when each task was dispatched and how often it ran, for the per-fault counts
            dispatches[contestant.name] = [(at - run.started, ran.get(task_id, 0))
                                           for task_id, at in contestant.task_times.items()]
        processes = None
        if served is not None:
            processes = {"responses": served.responses,
                         "transitions": served.transitions(run.wall0)}
        report = summarize(run, tasks, faults, skipped, received, blocked,
                           {"duration": args.duration, "concurrency": args.concurrency,
                            "pace": args.pace, "socket_timeout": SOCKET_TIMEOUT,
                            "processes": args.processes,
                            "worker_deaths": [{"at": round(at, 3), "exit_code": code,
                                               "last_critical": last}
                                              for at, code, last in run.worker_deaths]},
                           dispatches, processes)
        write_outputs(report, run, out)
        return 0
    finally:
        run.stop.set()
        if served is not None:
            served.close()
        if worker is not None:
            worker.stop()
        for loop in loops.values():
            loop.close()
        server.close()
        ledger.close()


if __name__ == "__main__":
    sys.exit(main())
