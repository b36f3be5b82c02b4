"""A state file the breaker cannot trust or use: per-process state, one WARNING, never raises.

Each case breaks the host-wide record one real way (bytes on disk, modes and
owners, a read-only or full file system, a record corrupted while in use) and
checks the same promise: exactly one ``host_state_unavailable`` WARNING saying
why, ``breaker.host_shared`` False, and a breaker that still works, calls
through to a real Redis and trips on its own. A file it could not trust is
left as it was.

The owner and file-system cases need root (``chown``, ``mount``); root is what
the suite runs as in CI. A mount the machine refuses is a skip that says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from redis_breaker import Breaker, BreakerConfig, BreakerOpenError, State, _shared
from redis_breaker.testing import capture_events
from tests.harness import RedisServer, free_port
from tests.harness.hostproc import make_client

NAME = "files"
NOBODY = 65534
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="chown and mount need root")


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


def state_file(directory: Path, server: RedisServer) -> Path:
    return Path(_shared.state_path(str(directory), NAME, server.url))


def valid_record() -> bytearray:
    """The bytes of a fresh, valid record of this boot and layout."""
    record = _shared.local_record(0.0)
    return bytearray(record.buffer)


def write_file(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def breaker_for(directory: Path, server: RedisServer, **config: Any) -> Breaker:
    # A long open interval: the trip below stays open while the test looks at it.
    config.setdefault("reset_timeout", 30.0)
    return Breaker(NAME, BreakerConfig(url=server.url, state_dir=str(directory), **config))


def assert_works_alone(breaker: Breaker, server: RedisServer) -> None:
    """Calls go to Redis; the breaker trips and resets, in this process only."""
    client = make_client(server.url)
    dead = make_client(f"redis://127.0.0.1:{free_port()}/0")
    try:
        for _ in range(10):
            assert breaker.call(client.ping) is True
        assert breaker.call_with_fallback(dead.get, lambda _key: "fallback", ("k",)) == "fallback"
        for _ in range(breaker.config.failure_threshold):
            with contextlib.suppress(redis.ConnectionError, BreakerOpenError):
                breaker.call(dead.get, "k")
        assert breaker.state is State.OPEN
        with pytest.raises(BreakerOpenError):
            breaker.call(client.ping)
        breaker.reset()
        assert breaker.call(client.ping) is True
        stats = breaker.stats()
        assert stats.state is State.CLOSED
        assert not stats.host_shared
        breaker.totals()
    finally:
        client.close()
        dead.close()


def assert_falls_back(directory: Path, server: RedisServer, why: str) -> Breaker:
    """A breaker on ``directory``: one WARNING naming ``why``, per-process state, working."""
    with capture_events() as events:
        breaker = breaker_for(directory, server)
        assert_works_alone(breaker, server)
    warnings = [e for e in events if e["event"] == "host_state_unavailable"]
    assert len(warnings) == 1, events
    (warning,) = warnings
    assert warning["log_level"] == "warning"
    assert warning["breaker"] == NAME
    assert why in warning["error"], warning
    assert not breaker.host_shared
    assert breaker.state_file is None
    return breaker


# --------------------------------------------------------------- bad bytes
@pytest.mark.parametrize(("data", "why"), [
    pytest.param(b"\xa5" * _shared.RECORD_SIZE, "not a redis-breaker state file", id="garbage"),
    pytest.param(b"\xa5" * 100, "corrupt state file (size 100, expected 4096)", id="short"),
    pytest.param(b"\xa5" * (2 * _shared.RECORD_SIZE),
                 "corrupt state file (size 8192, expected 4096)", id="long"),
])
def test_a_corrupt_file(redis_server: RedisServer, state_dir: Path, data: bytes,
                        why: str) -> None:
    path = state_file(state_dir, redis_server)
    write_file(path, data)
    assert_falls_back(state_dir, redis_server, why)
    assert path.read_bytes() == data, "the breaker wrote to a file it does not trust"


def test_a_file_of_another_layout_version(redis_server: RedisServer, state_dir: Path) -> None:
    path = state_file(state_dir, redis_server)
    data = valid_record()
    struct.pack_into("q", data, _shared.VERSION * 8, 2)
    write_file(path, bytes(data))
    assert_falls_back(state_dir, redis_server, "state file of another version (2, this one reads 1)")
    assert path.read_bytes() == data


def test_a_record_that_breaks_its_own_rules(redis_server: RedisServer, state_dir: Path) -> None:
    """Right magic and version, a state code out of range: corrupt (what a process
    opening a record corrupted while in use finds)."""
    path = state_file(state_dir, redis_server)
    data = valid_record()
    struct.pack_into("q", data, _shared.STATE * 8, 99)
    write_file(path, bytes(data))
    assert_falls_back(state_dir, redis_server, "corrupt state file")
    assert path.read_bytes() == data


def test_a_valid_file_is_shared(redis_server: RedisServer, state_dir: Path) -> None:
    """The control case: a record written by this layout is used, with no warning."""
    path = state_file(state_dir, redis_server)
    write_file(path, bytes(valid_record()))
    with capture_events() as events:
        breaker = breaker_for(state_dir, redis_server)
    assert breaker.host_shared
    assert breaker.state_file == str(path)
    assert [e for e in events if e["event"] == "host_state_unavailable"] == []


# ---------------------------------------------------------- modes, owners
def test_a_state_dir_others_can_write(redis_server: RedisServer, state_dir: Path) -> None:
    state_dir.chmod(0o777)
    assert_falls_back(state_dir, redis_server, "has mode 777")
    assert list(state_dir.iterdir()) == []


@needs_root
def test_a_state_dir_of_another_user(redis_server: RedisServer, state_dir: Path) -> None:
    os.chown(state_dir, NOBODY, NOBODY)
    assert_falls_back(state_dir, redis_server, f"belongs to uid {NOBODY}")
    assert list(state_dir.iterdir()) == []


@needs_root
def test_a_state_file_of_another_user(redis_server: RedisServer, state_dir: Path) -> None:
    path = state_file(state_dir, redis_server)
    data = bytes(valid_record())
    write_file(path, data)
    os.chown(path, NOBODY, NOBODY)
    assert_falls_back(state_dir, redis_server, f"the state file belongs to uid {NOBODY}")
    assert path.read_bytes() == data


# ------------------------------------------------------------ file systems
@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``mount(*args)``: mount on a fresh directory under tmp_path, unmounted afterwards."""
    if not ROOT:
        pytest.skip("mount needs root")
    mounted: list[Path] = []

    def do(*args: str) -> Path:
        target = tmp_path / f"mnt{len(mounted)}"
        target.mkdir(mode=0o700, exist_ok=True)
        done = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount here (mount {' '.join(args)}: {done.stderr.strip()})")
        mounted.append(target)
        return target

    yield do
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def remount_read_only(target: Path) -> None:
    done = subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot remount read-only here: {done.stderr.strip()}")


def test_a_read_only_state_dir(redis_server: RedisServer, mount: Callable[..., Path]) -> None:
    """An empty read-only file system (root ignores modes: it has to be the mount)."""
    directory = mount("-t", "tmpfs", "-o", "ro,mode=0700", "tmpfs")
    assert_falls_back(directory, redis_server, "Read-only file system")


def test_a_read_only_state_file(redis_server: RedisServer, state_dir: Path,
                                mount: Callable[..., Path]) -> None:
    """A valid state file on a directory bind-mounted read-only: it cannot be opened to write."""
    path = state_file(state_dir, redis_server)
    data = bytes(valid_record())
    write_file(path, data)
    directory = mount("--bind", str(state_dir))
    remount_read_only(directory)
    assert_falls_back(directory, redis_server, "Read-only file system")
    assert path.read_bytes() == data


def test_a_full_disk(redis_server: RedisServer, mount: Callable[..., Path]) -> None:
    """No block for the record (a mapping of an unbacked page would SIGBUS): posix_fallocate
    fails, the breaker keeps its state to itself."""
    directory = mount("-t", "tmpfs", "-o", "size=4k,mode=0700", "tmpfs")
    filler = directory / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * 4096)
    fd = os.open(directory / "probe", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        with pytest.raises(OSError, match="No space left"):
            os.posix_fallocate(fd, 0, _shared.RECORD_SIZE)
    finally:
        os.close(fd)
        (directory / "probe").unlink()
    assert_falls_back(directory, redis_server, "No space left on device")
    # A second process meets the same disk: it warns too, once.
    assert_falls_back(directory, redis_server, "No space left on device")


# -------------------------------------------------------- corrupted in use
def corrupt_state_slot(path: str) -> None:
    """Overwrite the STATE slot with 99, as a stray writer would, without any lock."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, struct.pack("q", 99), _shared.STATE * 8)
    finally:
        os.close(fd)


def assert_not_locked(path: str) -> None:
    """Nobody holds the file's flock: another process's next locked operation can go on."""
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AssertionError(
                "the process that gave up the state file still holds its flock: every "
                "other process of the host would block on its next locked operation") from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@pytest.mark.parametrize("operation", [
    "stats", "failure", "fallback", "reset"])
def test_a_record_corrupted_while_in_use(redis_server: RedisServer, state_dir: Path,
                                         operation: str) -> None:
    """The next locked operation finds the record corrupt: it goes on with the state in
    process memory, with one WARNING; the caller gets its answer, not an exception."""
    breaker = breaker_for(state_dir, redis_server)
    client = make_client(redis_server.url)
    dead = make_client(f"redis://127.0.0.1:{free_port()}/0")
    kept: list[object] = []  # what the caller keeps: an error reporter keeps exceptions
    try:
        assert breaker.host_shared
        assert breaker.call(client.ping) is True
        path = breaker.state_file
        assert path is not None
        corrupt_state_slot(path)
        with capture_events() as events:
            # The closed fast path reads the hot word only, which the corruption left alone.
            assert breaker.call(client.ping) is True
            assert breaker.state is State.CLOSED
            if operation == "stats":
                assert breaker.stats().state is State.CLOSED
            elif operation == "failure":
                with pytest.raises(redis.ConnectionError) as raised:
                    breaker.call(dead.get, "k")  # the call's own error, nothing else
                kept.append(raised.value)
            elif operation == "fallback":
                assert breaker.call_with_fallback(dead.get, lambda _k: "fb", ("k",)) == "fb"
            else:
                breaker.reset()
            assert_works_alone(breaker, redis_server)
        warnings = [e for e in events if e["event"] == "host_state_unavailable"]
        assert len(warnings) == 1, events
        assert warnings[0]["log_level"] == "warning"
        assert "corrupt state file" in warnings[0]["error"]
        assert not breaker.host_shared
        assert breaker.state_file is None
        # It let go of the file: the others can lock it, and one that opens it now
        # finds it corrupt too.
        assert_not_locked(path)
        assert_falls_back(state_dir, redis_server, "corrupt state file")
    finally:
        kept.clear()
        client.close()
        dead.close()
