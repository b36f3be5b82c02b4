"""The breaker's state record: a small file mapped into every process of a host.

One file per breaker name and Redis URL, in a per-user directory (0700). Every
process that uses the breaker maps the same 4 KiB file (``mmap``,
``MAP_SHARED``), so a trip in one process is seen by the others on their next
call: the closed fast path reads one 8-byte word of the mapping (the *hot
word*: the state's generation and the consecutive failures) and compares it
with the value it expects.

Writers hold an exclusive ``flock`` on the file (and, inside a process, the
breaker's thread lock, since ``flock`` does not exclude threads sharing a file
description): they read the record, change it, write it back and update the
hot word last. Readers of a single word need no lock (an aligned 8-byte load);
readers of several fields take the lock.

Anything wrong with the file (a directory or file of another user, a
directory others can write to, a corrupt or foreign record, a read-only or
full disk) degrades the breaker to a record in process memory, with one
WARNING event. Nothing here raises to a caller.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import math
import mmap
import os
import re
import stat
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ._events import emit
from ._redact import redact

__all__ = ["RECORD_SIZE", "Record", "attach", "default_state_dir", "local_record"]

RECORD_SIZE = 4096
_MAGIC = 0x31524B5242534452  # b"RDSBRKR1" little-endian: redis-breaker record, layout 1
_VERSION = 1

# Integer slots (8 bytes each).
MAGIC, VERSION, BOOT, HOT, GEN, STATE, CONSEC, TRIALS, TRIAL_OK, STEP = range(10)
FAILURES, LEASE_PID, LEASE_TOKEN, LAST_FROM, LAST_TO, LAST_FAILURES, LAST_FALLBACKS = range(10, 17)
ERR_LEN, REASON_LEN, IDENT_LEN, LEASE_NS = range(17, 21)
# Float slots.
SINCE, OPEN_UNTIL, NEXT_TRIAL_AT, LEFT_CLOSED_AT, CLOSED_AT, LEASE_UNTIL = range(32, 38)
LAST_AT, LAST_OPEN_FOR, TRIAL_STARTED_AT = range(38, 41)
# Text fields: (offset, capacity) in bytes.
ERROR_TEXT = (512, 1024)
REASON_TEXT = (1536, 1024)
IDENT_TEXT = (2560, 512)

#: The hot word packs the generation (high bits) and the consecutive failures (low bits).
CONSEC_BITS = 16
CONSEC_MAX = (1 << CONSEC_BITS) - 1
NO_TIME = math.nan
_STATE_CODES = 5


def hot_word(generation: int, consecutive: int) -> int:
    return (generation << CONSEC_BITS) | min(consecutive, CONSEC_MAX)


def default_state_dir() -> str:
    """``<temp dir>/redis-breaker-<uid>``: private to the user the processes run as."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return os.path.join(tempfile.gettempdir(), f"redis-breaker-{uid}")


def _boot_id() -> int:
    """Identifies this boot: ``time.monotonic`` values of another boot mean nothing."""
    try:
        text = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        text = ""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=7).digest(), "little")


_BOOT = _boot_id()


def pid_namespace() -> int:
    """The PID namespace of this process: a lease holder's pid means something only in it."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


class Record:
    """A breaker's state: in a mapped file (``shared``) or in process memory."""

    __slots__ = ("_ino", "buffer", "fd", "floats", "hot", "ints", "path", "shared")

    def __init__(self, buffer: mmap.mmap | bytearray, fd: int = -1, path: str | None = None,
                 ino: int = 0) -> None:
        self.buffer = buffer
        self.fd = fd
        self.path = path
        self.shared = fd >= 0
        self._ino = ino
        view = memoryview(buffer)
        self.ints = view.cast("q")
        self.floats = view.cast("d")
        #: The one word the closed fast path reads.
        self.hot = view[HOT * 8:HOT * 8 + 8].cast("q")

    # ------------------------------------------------------------------ lock
    def lock(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_EX)

    def unlock(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def reopen(self) -> bool:
        """After ``fork``: a file description of our own, so ``flock`` excludes the parent.

        The mapping itself is inherited and stays shared. False when the file
        is gone or was replaced (the caller then keeps the state in memory).
        """
        if not self.shared or self.path is None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            self.fd = -1
            return False
        if os.fstat(fd).st_ino != self._ino:
            os.close(fd)
            self.fd = -1
            return False
        self.fd = fd  # the parent's descriptor stays open in the child, unused
        return True

    # ------------------------------------------------------------------ text
    def text(self, field: tuple[int, int], length_slot: int) -> str | None:
        offset, capacity = field
        length = self.ints[length_slot]
        if length < 0:
            return None
        length = min(length, capacity)
        return bytes(self.buffer[offset:offset + length]).decode("utf-8", "replace")

    def set_text(self, field: tuple[int, int], length_slot: int, value: str | None) -> None:
        offset, capacity = field
        if value is None:
            self.ints[length_slot] = -1
            return
        data = value.encode("utf-8", "replace")[:capacity]
        self.buffer[offset:offset + len(data)] = data
        self.ints[length_slot] = len(data)

    # ------------------------------------------------------------ validation
    def problem(self) -> str | None:
        """Why the record cannot be trusted, or None."""
        ints = self.ints
        if ints[MAGIC] != _MAGIC:
            return "not a redis-breaker state file"
        if ints[VERSION] != _VERSION:
            return f"state file of another version ({ints[VERSION]}, this one reads {_VERSION})"
        if not 0 <= ints[STATE] < _STATE_CODES or ints[GEN] < 0 or ints[TRIALS] < 0:
            return "corrupt state file"
        if ints[HOT] != hot_word(ints[GEN], ints[CONSEC]):
            return "corrupt state file"
        for field, slot in ((ERROR_TEXT, ERR_LEN), (REASON_TEXT, REASON_LEN)):
            if not -1 <= ints[slot] <= field[1]:
                return "corrupt state file"
        return None

    def initialize(self, identity: str, since: float) -> None:
        """A fresh closed record (caller holds the lock)."""
        self.buffer[:RECORD_SIZE] = bytes(RECORD_SIZE)
        ints, floats = self.ints, self.floats
        ints[VERSION] = _VERSION
        ints[BOOT] = _BOOT
        for slot in (LAST_FROM, LAST_TO):
            ints[slot] = -1
        for slot in (ERR_LEN, REASON_LEN):
            ints[slot] = -1
        for slot in (LEFT_CLOSED_AT, CLOSED_AT, LAST_OPEN_FOR):
            floats[slot] = NO_TIME
        floats[SINCE] = since
        self.set_text(IDENT_TEXT, IDENT_LEN, identity)
        ints[HOT] = hot_word(0, 0)
        ints[MAGIC] = _MAGIC  # last: a record without it is not initialized yet

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        # A breaker dropped without closing its record (one made for a while, or a
        # registry cleared): its descriptor goes with it. The mapping closes its own.
        self.close()

    def release(self) -> None:
        """Unmap a record nobody uses (the views first: a mapping with views cannot close)."""
        for view in (self.hot, self.ints, self.floats):
            view.release()
        if isinstance(self.buffer, mmap.mmap):
            self.buffer.close()
        self.close()

    def replaced(self) -> bool:
        """True when the file was removed or replaced since it was opened (a temp cleaner):
        processes that open it now would share another record than this one."""
        if not self.shared or self.path is None:
            return False
        try:
            info = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return True
        return info.st_ino != self._ino


def local_record(since: float) -> Record:
    """A record in process memory (``HOST_SHARED: False``, or a state file that cannot be used)."""
    record = Record(bytearray(RECORD_SIZE))
    record.initialize("", since)
    return record


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40] or "breaker"


def _endpoint(url: str | None) -> str:
    """The URL without its user name and password: the key names the endpoint, and a
    file name must not let anyone guess a password offline."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        query = "&".join(pair for pair in parts.query.split("&")
                         if pair.partition("=")[0].lower() in _KEY_QUERY)
        return urlunsplit((parts.scheme, host, parts.path, query, ""))
    except ValueError:
        return redact(url)


#: Query parameters that change which endpoint or database a URL names.
_KEY_QUERY = frozenset({"db", "path", "service_name"})


def state_path(directory: str, name: str, url: str | None) -> str:
    digest = hashlib.sha256(f"{name}\0{_endpoint(url)}".encode()).hexdigest()[:16]
    return os.path.join(directory, f"{_slug(name)}-{digest}.state")


class StateFileError(Exception):
    """The state file cannot be used; the message says why (no credentials)."""


def _private_dir(directory: str) -> None:
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        info = os.lstat(directory)
    except OSError as exc:
        raise StateFileError(f"cannot create the state directory: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise StateFileError("the state directory is not a directory (a symlink?)")
    if info.st_uid != os.getuid():
        raise StateFileError(f"the state directory belongs to uid {info.st_uid}, "
                             f"not to this process's uid {os.getuid()}")
    if info.st_mode & 0o077:
        raise StateFileError(f"the state directory has mode {stat.S_IMODE(info.st_mode):o}; "
                             "it must be private to its owner (0700)")


def _allocate(fd: int) -> None:
    try:
        os.posix_fallocate(fd, 0, RECORD_SIZE)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        # A file system without fallocate: writing the zeros allocates the blocks.
        if os.pwrite(fd, bytes(RECORD_SIZE), 0) != RECORD_SIZE:
            raise OSError(errno.ENOSPC, "short write") from None


def _open_record(directory: str, name: str, url: str | None, since: float) -> Record:
    _private_dir(directory)
    path = state_path(directory, name, url)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StateFileError(f"cannot open the state file: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StateFileError("the state file is not a regular file")
        if info.st_uid != os.getuid():
            raise StateFileError(f"the state file belongs to uid {info.st_uid}")
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                # Allocate the blocks now: a write to a mapping of a file the full
                # disk could not back would kill the process (SIGBUS).
                _allocate(fd)
            elif size != RECORD_SIZE:
                raise StateFileError(f"corrupt state file (size {size}, expected {RECORD_SIZE})")
            buffer = mmap.mmap(fd, RECORD_SIZE, mmap.MAP_SHARED,
                               mmap.PROT_READ | mmap.PROT_WRITE)
            record = Record(buffer, fd, path, info.st_ino)
            identity = f"{name} {redact(url) if url else '-'}"
            ints = record.ints
            if size == 0 or ints[MAGIC] == 0:
                # New, or its creator died before finishing (it writes the magic last).
                record.initialize(identity, since)
            elif ints[MAGIC] == _MAGIC and ints[VERSION] == _VERSION and ints[BOOT] != _BOOT:
                record.initialize(identity, since)  # written before this boot: stale
            else:
                why = record.problem()
                if why is not None:
                    record.fd = -1  # closed below
                    record.release()
                    raise StateFileError(why)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    except StateFileError:
        os.close(fd)
        raise
    except (OSError, ValueError, BufferError) as exc:
        os.close(fd)
        reason = getattr(exc, "strerror", None) or str(exc)
        raise StateFileError(f"cannot use the state file: {reason}") from None
    return record


def attach(name: str, url: str | None, directory: str | None, since: float) -> Record:
    """The host-wide record of breaker ``name`` on ``url``, or a local one with a WARNING."""
    directory = directory or default_state_dir()
    try:
        return _open_record(directory, name, url, since)
    except StateFileError as exc:
        emit(logging.WARNING, "host_state_unavailable", breaker=name,
             state_dir=directory, error=str(exc),
             hint="This process keeps the breaker's state to itself. Fix the state "
                  "directory (STATE_DIR), or set HOST_SHARED to False.")
        return local_record(since)
