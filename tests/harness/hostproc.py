"""Real processes of one host sharing a breaker, for the host-wide state tests.

The worker side runs as ``python -m tests.harness.hostproc <role> --config JSON
--control DIR --out DIR [options]`` from the repository root (``Fleet.spawn``
does that). ``--config`` holds the ``BreakerConfig`` keyword arguments (its
``state_dir`` always explicit: a subprocess does not see the test's
monkeypatched default). Roles:

``worker``
    One process, one breaker. With ``--traffic`` it calls
    ``breaker.call(client.get, "k")`` in a loop (a redis-py client with 0.5 s
    socket timeouts and no retries: one attempt per call), recording each
    call's start, duration and outcome (``ok``, ``rejected``: BreakerOpenError,
    ``failed``: anything else) until the control file ``quiet`` appears. Then
    it idles (its probe thread, if any, keeps following the state) until
    ``exit``; on ``final`` it makes one more call. ``--wait-go`` creates the
    breaker only once ``go`` exists.
``preload``
    gunicorn ``--preload``: the parent creates the breaker and makes one call
    through it (attached), then forks ``--children`` children that run the
    ``worker`` loop with traffic on the inherited breaker; the parent stays as
    an observer without traffic and reaps its children on ``exit``.
``count``
    The children's ``flock`` excludes: a parent attaches, forks ``--children``,
    and every process runs ``--threads`` threads making ``--calls`` failing
    calls each (a port nothing listens on: connection refused) with a
    threshold they do not reach. Prints one JSON line: the consecutive failures
    the shared record holds, and what they must be if no update was lost.
``pool``
    A Celery-prefork-like pool (``multiprocessing``, fork start method): the
    parent configures and attaches the breaker, forks pool processes that take
    commands from queues, one trips the breaker, the others and a process
    forked while it is open are rejected, the parent resets it. Prints one
    JSON line with what every step saw.

Every ``worker``/``preload`` process writes JSON lines to ``<out>/<pid>.jsonl``
(kinds ``waiting``, ``ready``, ``tick`` every 0.1 s, ``change`` from a
listener, ``calls``, ``final``, ``bye``). Times are ``time.monotonic()``: on
Linux one clock (CLOCK_MONOTONIC) for every process of the host, the one the
state record is written with.

The test side: ``Fleet`` (spawn, command, read and clean up the processes),
``StateView`` (reads a state file without taking part: a read-only mapping, no
lock, no breaker), ``status_command`` (``python -m django redis_breaker status
--json`` in a fresh process).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from redis_breaker import Breaker, BreakerConfig, BreakerOpenError, State, StateChange, _shared
from redis_breaker._breaker import _CODES, add_global_listener
from redis_breaker.testing import capture_events

__all__ = ["REPO_ROOT", "SOCKET_TIMEOUT", "Fleet", "StateView", "make_client", "status_command"]

REPO_ROOT = Path(__file__).resolve().parents[2]
SOCKET_TIMEOUT = 0.5
TICK_S = 0.1
#: A worker exits by itself after this long, whatever happens to the test.
LIFETIME_S = 240.0


def make_client(url: str) -> redis.Redis:
    """A redis-py client with 0.5 s connect and read timeouts and no retries."""
    return redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT,
                                socket_connect_timeout=SOCKET_TIMEOUT, retry=Retry(NoBackoff(), 0))


# ====================================================================== worker side
class Reporter:
    """JSON lines to ``<out>/<pid>.jsonl``; one ``write`` per line (O_APPEND)."""

    def __init__(self, out: str) -> None:
        self._lock = threading.Lock()
        self._fd = os.open(os.path.join(out, f"{os.getpid()}.jsonl"),
                           os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def write(self, kind: str, **fields: Any) -> None:
        data = (json.dumps({"kind": kind, "pid": os.getpid(), **fields}) + "\n").encode()
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]


class Control:
    """Commands from the test: empty files in a directory."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.deadline = time.monotonic() + LIFETIME_S

    def has(self, word: str) -> bool:
        return os.path.exists(os.path.join(self.path, word)) or time.monotonic() > self.deadline

    def wait(self, word: str) -> None:
        while not self.has(word):
            time.sleep(0.01)


def change_fields(change: StateChange) -> dict[str, Any]:
    return {"t": time.monotonic(), "at": change.at, "from": change.from_state.value,
            "to": change.to_state.value, "remote": change.remote, "reason": change.reason}


def one_call(breaker: Breaker, client: redis.Redis) -> tuple[str, str | None]:
    try:
        breaker.call(client.get, "k")
    except BreakerOpenError:
        return "rejected", None
    except Exception as exc:
        return "failed", type(exc).__name__
    return "ok", None


def run_worker(breaker: Breaker, url: str, control: Control, reporter: Reporter, *,
               role: str, traffic: bool, pause: float, stats: bool) -> None:
    """Report, call (with ``traffic``) until ``quiet``, idle until ``exit``."""
    client = make_client(url)
    counts = {"ok": 0, "rejected": 0, "failed": 0}
    stop = threading.Event()

    def ticks() -> None:
        while not stop.wait(TICK_S):
            fields: dict[str, Any] = {"t": time.monotonic(), "state": breaker.state.value,
                                      **counts}
            if stats:
                s = breaker.stats()
                fields.update(probe_pid=s.probe_pid, local_state=s.state.value,
                              host_shared=s.host_shared)
            reporter.write("tick", **fields)

    with capture_events() as events:
        reporter.write("ready", t=time.monotonic(), role=role, ppid=os.getppid(),
                       state=breaker.state.value, host_shared=breaker.host_shared,
                       state_file=breaker.state_file)
        ticker = threading.Thread(target=ticks, daemon=True)
        ticker.start()
        if traffic:
            calls: list[tuple[float, float, str, str | None]] = []
            while not control.has("quiet"):
                start = time.monotonic()
                outcome, error = one_call(breaker, client)
                calls.append((start, time.monotonic() - start, outcome, error))
                counts[outcome] += 1
                if pause:
                    time.sleep(pause)
            reporter.write("calls", t=time.monotonic(), calls=calls)
        final_done = False
        while not control.has("exit"):
            if not final_done and control.has("final"):
                final_done = True
                outcome, error = one_call(breaker, client)
                reporter.write("final", t=time.monotonic(), outcome=outcome, error=error,
                               state=breaker.state.value)
            time.sleep(0.02)
        stop.set()
        ticker.join(5)
        logged = [{"from": e.get("from_state"), "to": e.get("to_state")}
                  for e in list(events) if e["event"] == "breaker_state_changed"]
    totals = breaker.totals()
    reporter.write("bye", t=time.monotonic(), state=breaker.state.value, logged=logged,
                   transitions={f"{a}->{b}": n for (a, b), n in totals.transitions.items()})
    client.close()


def _config(args: argparse.Namespace) -> BreakerConfig:
    values = json.loads(args.config)
    if not values.get("state_dir"):
        raise SystemExit("hostproc: --config must name state_dir (the test's default is not "
                         "inherited by a subprocess)")
    return BreakerConfig(**values)


def worker_main(args: argparse.Namespace) -> int:
    reporter = Reporter(args.out)
    control = Control(args.control)
    if args.wait_go:
        reporter.write("waiting", t=time.monotonic())
        control.wait("go")
    # A global listener, registered before the breaker exists: it also hears the
    # change the breaker finds when it attaches to a record that is not closed.
    add_global_listener(lambda _b, change: reporter.write("change", **change_fields(change)))
    config = _config(args)
    breaker = Breaker(args.name, config)
    run_worker(breaker, str(config.url), control, reporter, role="worker",
               traffic=args.traffic, pause=args.pause, stats=args.stats)
    return 0


def preload_main(args: argparse.Namespace) -> int:
    config = _config(args)
    control = Control(args.control)
    breaker = Breaker(args.name, config)
    client = make_client(str(config.url))
    breaker.call(client.ping)  # the master imported the app and used it: attached, closed
    client.close()
    children = []
    for _ in range(args.children):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                child_reporter = Reporter(args.out)
                breaker.add_listener(
                    lambda change, r=child_reporter: r.write("change", **change_fields(change)))
                run_worker(breaker, str(config.url), control, child_reporter, role="child",
                           traffic=True, pause=args.pause, stats=args.stats)
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    reporter = Reporter(args.out)
    breaker.add_listener(lambda change: reporter.write("change", **change_fields(change)))
    run_worker(breaker, str(config.url), control, reporter, role="parent", traffic=False,
               pause=args.pause, stats=args.stats)
    codes = {}
    for pid in children:
        _, status = os.waitpid(pid, 0)
        codes[pid] = os.waitstatus_to_exitcode(status)
    reporter.write("children", codes=codes)
    return 0 if all(code == 0 for code in codes.values()) else 1


def count_main(args: argparse.Namespace) -> int:
    """Every process and thread records failures; the shared count must lose none."""
    # The highest threshold there is (the hot word counts to 65535): it never trips here.
    values = {**json.loads(args.config), "failure_threshold": _shared.CONSEC_MAX,
              "failure_rate": None}
    breaker = Breaker(args.name, BreakerConfig(**values))
    client = make_client(values["url"])
    breaker.call(client.ping)
    client.close()
    dead_url = args.dead_url

    def fail_many() -> int:
        dead = make_client(dead_url)
        refused = 0
        for _ in range(args.calls):
            try:
                breaker.call(dead.get, "k")
            except redis.ConnectionError:
                refused += 1
        dead.close()
        return refused

    def run_threads() -> int:
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(fail_many()))
                   for _ in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(results)

    children = []
    for _ in range(args.children):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                refused = run_threads()
                line = json.dumps({"child": os.getpid(), "refused": refused,
                                   "host_shared": breaker.host_shared,
                                   "state_file": breaker.state_file}) + "\n"
                os.write(1, line.encode())
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    refused = run_threads()
    codes = []
    for pid in children:
        _, status = os.waitpid(pid, 0)
        codes.append(os.waitstatus_to_exitcode(status))
    print(json.dumps({
        "parent": os.getpid(), "refused": refused, "codes": codes,
        "consecutive": breaker.stats().consecutive_failures,
        "expected": (args.children + 1) * args.threads * args.calls,
        "threshold": breaker.config.failure_threshold,
        "state_file": breaker.state_file, "host_shared": breaker.host_shared,
    }), flush=True)
    return 0


# A Celery prefork pool in miniature: the breaker is module state of the parent,
# inherited by every pool process it forks.
_POOL_BREAKER: Breaker | None = None
_POOL_URLS: tuple[str, str] = ("", "")


def _pool_process(commands: Any, results: Any) -> None:
    breaker = _POOL_BREAKER
    assert breaker is not None
    url, dead_url = _POOL_URLS
    client = make_client(url)
    while True:
        command = commands.get(timeout=60)
        if command == "exit":
            client.close()
            return
        seen: dict[str, Any] = {"pid": os.getpid(), "command": command}
        if command == "trip":
            dead = make_client(dead_url)
            failed = 0
            while True:
                outcome, _ = one_call(breaker, dead)
                if outcome != "failed":
                    break
                failed += 1
            dead.close()
            seen.update(failed=failed, then=outcome)
        else:
            seen["outcome"] = one_call(breaker, client)[0]
        seen.update(state=breaker.state.value, host_shared=breaker.host_shared,
                    state_file=breaker.state_file)
        results.put(seen)


def pool_main(args: argparse.Namespace) -> int:
    import multiprocessing

    global _POOL_BREAKER, _POOL_URLS
    values = json.loads(args.config)
    _POOL_BREAKER = breaker = Breaker(args.name, BreakerConfig(**values))
    _POOL_URLS = (values["url"], args.dead_url)
    client = make_client(values["url"])
    breaker.call(client.ping)
    client.close()
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    pool: list[tuple[Any, Any]] = []

    def fork_one() -> None:
        commands = ctx.Queue()
        process = ctx.Process(target=_pool_process, args=(commands, results), daemon=True)
        process.start()
        pool.append((process, commands))

    def ask(index: int, command: str) -> dict[str, Any]:
        pool[index][1].put(command)
        answer: dict[str, Any] = results.get(timeout=60)
        return answer

    report: dict[str, Any] = {"parent": os.getpid(), "state_file": breaker.state_file,
                              "host_shared": breaker.host_shared}
    for _ in range(args.children):
        fork_one()
    report["before"] = [ask(i, "call") for i in range(len(pool))]
    report["trip"] = ask(0, "trip")
    report["parent_after_trip"] = breaker.state.value
    report["others"] = [ask(i, "call") for i in range(1, len(pool))]
    fork_one()  # a pool process replaced while the breaker is open
    report["forked_while_open"] = ask(len(pool) - 1, "call")
    breaker.reset("the test resets it")
    report["after_reset"] = [ask(i, "call") for i in range(len(pool))]
    for _, commands in pool:
        commands.put("exit")
    codes = []
    for process, _ in pool:
        process.join(30)
        codes.append(process.exitcode)
    report["codes"] = codes
    print(json.dumps(report), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.harness.hostproc")
    parser.add_argument("role", choices=("worker", "preload", "count", "pool"))
    parser.add_argument("--config", required=True, help="BreakerConfig kwargs, as JSON")
    parser.add_argument("--name", default="hostwide")
    parser.add_argument("--control", default="")
    parser.add_argument("--out", default="")
    parser.add_argument("--traffic", action="store_true")
    parser.add_argument("--pause", type=float, default=0.005, help="sleep between calls (s)")
    parser.add_argument("--stats", action="store_true", help="ticks carry stats()")
    parser.add_argument("--wait-go", action="store_true")
    parser.add_argument("--children", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--dead-url", default="")
    args = parser.parse_args(argv)
    role: Callable[[argparse.Namespace], int] = {
        "worker": worker_main, "preload": preload_main, "count": count_main, "pool": pool_main,
    }[args.role]
    return role(args)


# ======================================================================== test side
class StateView:
    """A state file read from outside: a read-only mapping, no lock, no breaker."""

    def __init__(self, path: str) -> None:
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), _shared.RECORD_SIZE, prot=mmap.PROT_READ)
        self._view = memoryview(self._map)
        self._ints = self._view.cast("q")
        self._floats = self._view.cast("d")

    @property
    def hot_generation(self) -> int:
        """The generation in the hot word: what the closed fast path compares."""
        return int(self._ints[_shared.HOT]) >> _shared.CONSEC_BITS

    @property
    def state(self) -> State:
        return _CODES[self._ints[_shared.STATE]]

    @property
    def lease_pid(self) -> int:
        return int(self._ints[_shared.LEASE_PID])

    @property
    def lease_held(self) -> bool:
        return bool(self._ints[_shared.LEASE_TOKEN]) and (
            self._floats[_shared.LEASE_UNTIL] > time.monotonic())

    def close(self) -> None:
        for view in (self._ints, self._floats, self._view):
            view.release()
        self._map.close()


class Fleet:
    """Worker processes of one test: spawned from the repository root, commanded by files."""

    def __init__(self, tmp_path: Path, name: str = "hostwide") -> None:
        self.name = name
        self.root = tmp_path
        self.state_dir = tmp_path / "state"
        self.control = tmp_path / "control"
        self.out = tmp_path / "out"
        self.logs = tmp_path / "logs"
        for path in (self.state_dir, self.control, self.out, self.logs):
            path.mkdir(exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        self.processes: list[subprocess.Popen[bytes]] = []

    def spawn(self, role: str, config: dict[str, Any], *options: str) -> subprocess.Popen[bytes]:
        config = {"state_dir": str(self.state_dir), **config}
        argv = [sys.executable, "-m", "tests.harness.hostproc", role, "--name", self.name,
                "--config", json.dumps(config), "--control", str(self.control),
                "--out", str(self.out), *options]
        log = open(self.logs / f"{len(self.processes)}.log", "wb")  # noqa: SIM115
        try:
            process = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        finally:
            log.close()
        self.processes.append(process)
        return process

    def command(self, word: str) -> None:
        (self.control / word).touch()

    def lines(self) -> dict[int, list[dict[str, Any]]]:
        """Every process's complete lines so far, by pid."""
        found: dict[int, list[dict[str, Any]]] = {}
        for path in sorted(self.out.glob("*.jsonl")):
            text = path.read_text()
            complete = text[:text.rfind("\n") + 1]
            found[int(path.stem)] = [json.loads(line) for line in complete.splitlines() if line]
        return found

    def of_kind(self, kind: str) -> dict[int, list[dict[str, Any]]]:
        return {pid: [x for x in lines if x["kind"] == kind]
                for pid, lines in self.lines().items()}

    def last(self, kind: str) -> dict[int, dict[str, Any]]:
        return {pid: xs[-1] for pid, xs in self.of_kind(kind).items() if xs}

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        """Poll ``predicate`` up to ``timeout`` s (a liveness bound, not a timing claim)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() not in (None, 0, -signal.SIGKILL):
                    raise AssertionError(f"a worker exited with {process.returncode} "
                                         f"while waiting for {what}\n{self.log_tail()}")
            if predicate():
                return
            time.sleep(0.05)
        if not predicate():
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n"
                                 f"{self.log_tail()}")

    def value(self, produce: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
        """Poll ``produce`` until it returns something other than None; return that."""
        found: list[Any] = []

        def ready() -> bool:
            value = produce()
            if value is not None:
                found.append(value)
            return value is not None

        self.wait(ready, what, timeout)
        return found[-1]

    def log_tail(self, chars: int = 3000) -> str:
        parts = []
        for path in sorted(self.logs.glob("*.log")):
            text = path.read_text(errors="replace").strip()
            if text:
                parts.append(f"--- {path.name}:\n{text[-chars:]}")
        return "\n".join(parts)

    def close(self, timeout: float = 20.0) -> list[int | None]:
        """``exit`` to every worker; whatever still runs after ``timeout`` is killed."""
        self.command("exit")
        deadline = time.monotonic() + timeout
        codes: list[int | None] = []
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
                codes.append(None)
            else:
                codes.append(process.returncode)
        return codes


@contextlib.contextmanager
def fleet_of(tmp_path: Path, name: str = "hostwide") -> Iterator[Fleet]:
    fleet = Fleet(tmp_path, name)
    try:
        yield fleet
    finally:
        fleet.close(timeout=5.0)


def status_command(tmp_path: Path, breakers: dict[str, dict[str, Any]],
                   timeout: float = 60.0) -> dict[str, Any]:
    """``python -m django redis_breaker status --json`` in a fresh process; its report.

    Its settings are a module written to ``tmp_path``: ``REDIS_BREAKERS`` as
    given (explicit URL and STATE_DIR), ``INSTALLED_APPS`` with redis_breaker,
    a SQLite file database (no migrations: the outbox is reported as absent).
    """
    package = tmp_path / "status_settings"
    package.mkdir(exist_ok=True)
    (package / "hostwide_settings.py").write_text(
        "SECRET_KEY = 'hostwide-status'\n"
        "USE_TZ = True\n"
        "INSTALLED_APPS = ['django.contrib.contenttypes', 'redis_breaker']\n"
        f"DATABASES = {{'default': {{'ENGINE': 'django.db.backends.sqlite3', "
        f"'NAME': {str(package / 'db.sqlite3')!r}}}}}\n"
        f"REDIS_BREAKERS = {breakers!r}\n"
        "DEFAULT_AUTO_FIELD = 'django.db.models.BigAutoField'\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "hostwide_settings",
           "PYTHONPATH": os.pathsep.join(p for p in (str(package), os.environ.get("PYTHONPATH"))
                                         if p)}
    done = subprocess.run([sys.executable, "-m", "django", "redis_breaker", "status", "--json"],
                          cwd=package, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"status command failed:\n{done.stdout}\n{done.stderr}"
    report: dict[str, Any] = json.loads(done.stdout)
    return report


if __name__ == "__main__":
    sys.exit(main())
