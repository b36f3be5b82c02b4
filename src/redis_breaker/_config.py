"""Breaker configuration: one frozen dataclass and the validation that both
``BreakerConfig`` (``ValueError``) and the Django system checks (``Error``) use.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from ._redact import redact, redact_url, redact_value, remember_url, shown

__all__ = ["MAX_SECONDS", "MIN_SECONDS", "SETTINGS", "BreakerConfig", "Problem", "SettingSpec",
           "url_problem", "validate_settings"]

#: The schemes redis-py's ``from_url`` reads, and ours for Sentinel.
URL_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel")
_URL_FIX = ("Set {key} to a redis://, rediss:// or unix:// URL, or for Redis Sentinel to "
            "redis+sentinel://host:port,host:port/master_name; percent-encode any of "
            "@ : / ? # % and spaces in the user name or password.")
#: Every duration is a finite number of seconds in this range: no subnormal or
#: infinite value that the clock arithmetic, socket timeouts or waits cannot take.
MIN_SECONDS = 0.001
MAX_SECONDS = 86400.0
MIN_RATE = 0.001
#: The consecutive failures the host-wide record counts (its hot word has 16 bits for them).
MAX_FAILURE_THRESHOLD = 65535
MAX_COUNT = 1_000_000


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a breaker's settings.

    ``kind`` is one of ``unknown``, ``type``, ``value``, ``consistency``,
    ``import``; the Django checks map it to a stable id.
    """

    key: str
    kind: str
    #: Text with ``{key}`` where the setting's name goes (upper case in Django
    #: settings, lower case for ``BreakerConfig`` fields).
    template: str
    fix_template: str

    def message(self, key: str | None = None) -> str:
        return self.template.format(key=key or self.key)

    def fix(self, key: str | None = None) -> str:
        return self.fix_template.format(key=key or self.key)


@dataclass(frozen=True, slots=True)
class SettingSpec:
    key: str
    default: Any
    types: tuple[type, ...]
    type_name: str
    check: Callable[[Any], bool] | None
    rule: str
    meaning: str
    nullable: bool = False

    @property
    def field(self) -> str:
        return self.key.lower()


def _seconds(v: Any) -> bool:
    # Comparisons alone: NaN fails both, infinities and subnormals fall outside, and a
    # huge int is compared exactly (math.isfinite would overflow on it).
    return bool(MIN_SECONDS <= v <= MAX_SECONDS)


def _rate(v: Any) -> bool:
    return bool(MIN_RATE <= v <= 1)


def _failure_threshold(v: Any) -> bool:
    return bool(1 <= v <= MAX_FAILURE_THRESHOLD)


def _count(v: Any) -> bool:
    return bool(1 <= v <= MAX_COUNT)


def _state_dir(v: Any) -> bool:
    path = os.fspath(v)
    return isinstance(path, str) and "\x00" not in path and os.path.isabs(path)


_NUM = (int, float)
_SECONDS_RULE = f"from {MIN_SECONDS} to {MAX_SECONDS:.0f} (seconds; one day)"
_COUNT_RULE = f"from 1 to {MAX_COUNT}"

#: Every setting a breaker takes, in documentation order. The configuration
#: reference in ``docs/`` is checked against this table by the test suite.
SETTINGS: tuple[SettingSpec, ...] = (
    SettingSpec("URL", None, (str,), "a Redis URL string", None,
                "a redis://, rediss://, unix:// or redis+sentinel:// URL",
                "The Redis endpoint the probe PINGs while the breaker is open; "
                "redis+sentinel://host:port,host:port/master_name finds the current master "
                "through Sentinel on every probe. "
                "Integrations fill it from their own connection settings when it is not set.",
                nullable=True),
    SettingSpec("FAILURE_THRESHOLD", 5, (int,), "an integer", _failure_threshold,
                f"from 1 to {MAX_FAILURE_THRESHOLD}",
                "Consecutive counted failures that open the breaker."),
    SettingSpec("FAILURE_RATE", 0.5, _NUM, "a number", _rate,
                f"greater than 0 (at least {MIN_RATE}) and at most 1",
                "Failure rate over WINDOW that opens the breaker (None turns rate tripping off).",
                nullable=True),
    SettingSpec("WINDOW", 10.0, _NUM, "a number of seconds", _seconds, _SECONDS_RULE,
                "Length of the sliding window, in seconds, for FAILURE_RATE; also how long a "
                "recovery must hold for the next trip to start from RESET_TIMEOUT again."),
    SettingSpec("MINIMUM_CALLS", 20, (int,), "an integer", _count, _COUNT_RULE,
                "Calls needed in the window before FAILURE_RATE can open the breaker."),
    SettingSpec("SLOW_CALL_THRESHOLD", None, _NUM, "a number of seconds", _seconds,
                _SECONDS_RULE,
                "Calls slower than this many seconds count as failures (grey failures). "
                "None: speed is not judged.",
                nullable=True),
    SettingSpec("RESET_TIMEOUT", 0.5, _NUM, "a number of seconds", _seconds, _SECONDS_RULE,
                "First open interval: how long trial traffic waits after a trip. Doubles (with "
                "jitter) on every failed half-open and on every trip within WINDOW seconds "
                "of a recovery (Redis flapping); the probe keeps PINGing every PROBE_INTERVAL."),
    SettingSpec("MAX_RESET_TIMEOUT", 30.0, _NUM, "a number of seconds", _seconds,
                _SECONDS_RULE, "Ceiling of the growing open interval."),
    SettingSpec("HALF_OPEN_MAX_CALLS", 1, (int,), "an integer", _count, _COUNT_RULE,
                "Trial calls allowed at once while half-open; every other caller is rejected "
                "at once."),
    SettingSpec("SUCCESS_THRESHOLD", 2, (int,), "an integer", _count, _COUNT_RULE,
                "Successful trial calls that close the breaker."),
    SettingSpec("PROBE", True, (bool,), "True or False", None, "",
                "Run a background thread that PINGs URL while the breaker is open. "
                "Without it (or without a URL), real traffic makes the trial calls."),
    SettingSpec("PROBE_TIMEOUT", 0.25, _NUM, "a number of seconds", _seconds, _SECONDS_RULE,
                "Connect and read timeout of each probe PING."),
    SettingSpec("PROBE_INTERVAL", 0.25, _NUM, "a number of seconds", _seconds, _SECONDS_RULE,
                "How often the probe PINGs Redis while the breaker is open (jittered by 20 %), "
                "whatever the outage's length; also the spacing of its half-open trial calls."),
    SettingSpec("HOST_SHARED", True, (bool,), "True or False", None, "",
                "Share the breaker's state with every process of the host that uses the same "
                "breaker name and URL (a small memory-mapped file in STATE_DIR): one process's "
                "discovery opens it everywhere, one probe per host. False keeps the state in "
                "each process."),
    SettingSpec("STATE_DIR", None, (str, os.PathLike), "a directory path (str or Path)",
                _state_dir,
                "that is an absolute path (a str, without NUL characters)",
                "Directory of the host-wide state files, created 0700 and private to the user "
                "the processes run as. None: redis-breaker-<uid> in the system's temp directory.",
                nullable=True),
    SettingSpec("COUNT_EXCEPTIONS", (), (list, tuple), "a list of exception classes or dotted paths",
                None, "", "Extra exception types that count as failures."),
    SettingSpec("EXCLUDE_EXCEPTIONS", (), (list, tuple), "a list of exception classes or dotted paths",
                None, "", "Exception types that never count, even when they would by default."),
)

_BY_KEY = {s.key: s for s in SETTINGS}


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DIGITS = re.compile(r"[0-9]+")
_ENCODE = (" (an @ after the host: a '/', '?' or '#' in the user name or password must be "
           "percent-encoded as %2F, %3F, %23)")
#: Query parameters of a URL that redis-py turns into numbers, and the range each must be in.
_URL_NUMBERS: dict[str, tuple[float, float]] = {
    "socket_timeout": (MIN_SECONDS, MAX_SECONDS),
    "socket_connect_timeout": (MIN_SECONDS, MAX_SECONDS),
    "timeout": (MIN_SECONDS, MAX_SECONDS),
    "health_check_interval": (0, MAX_SECONDS),
    "db": (0, 2**31 - 1),
    "max_connections": (1, 2**31 - 1),
    "socket_read_size": (1, 2**31 - 1),
    "protocol": (2, 3),
}


def url_problem(url: str) -> str | None:
    """What makes ``url`` unusable for redis-py (and so for the probe), or None.

    Read with redis-py's own parser (``redis.connection.parse_url``) and the
    connection class it picks, plus what that parser lets through: a port out of
    1-65535, a path that is not a database number (read as 0), whitespace in the
    host, numbers that are not finite. The text never repeats a part of the URL
    (a misplaced password would show): only the scheme and parameter names.
    """
    if url != url.strip():
        return "has whitespace at its start or end"
    if _CONTROL.search(url):
        return "holds a control character (a line break, a tab, ...)"
    match = _SCHEME.match(url)
    if match is None:
        return ("is not a URL (expected redis://, rediss://, unix:// or "
                "redis+sentinel:// before the address)")
    scheme = match.group(1)
    if scheme.lower() == "redis+sentinel":
        return _sentinel_problem(url)
    if scheme not in ("redis", "rediss", "unix"):
        return (f"has scheme {scheme!r}; redis-py reads redis://, rediss:// and unix:// "
                "(and this library redis+sentinel://)")
    try:
        parts = urlsplit(url)
    except ValueError:
        return "is not a valid URL (an unbalanced [ or ] in its host)"
    netloc_end = match.end() + len(parts.netloc)
    hint = _ENCODE if "@" not in parts.netloc and "@" in url[netloc_end:] else ""
    try:
        port = parts.port
    except ValueError:
        port = 0
    if scheme == "unix":
        if not parts.path:
            return "names no socket path (unix:///path/to/redis.sock)" + hint
    else:
        if port == 0 and parts.netloc.rpartition("@")[2].rpartition("]")[2].count(":"):
            return "has a port that is not a number from 1 to 65535" + hint
        host = parts.hostname
        if not host:
            return "has no host" + hint
        if any(c.isspace() for c in host):
            return "has whitespace in its host"
        db = unquote(parts.path).replace("/", "")
        if db and not _DIGITS.fullmatch(db):
            return ("has a path other than /<database number> (redis-py would use "
                    "database 0)" + hint)
    return _redis_py_problem(url, hint)


def _redis_py_problem(url: str, hint: str) -> str | None:
    """What redis-py's parser and connection class say of ``url`` (never its text)."""
    from redis.connection import Connection, parse_url

    try:
        kwargs = parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        # redis-py 5.1+ quotes the name with '...', 5.0 with `...`.
        name = re.search(r"Invalid value for ['`]([^'`]*)['`]", str(exc))
        if name is not None:
            return f"has an invalid value for its {name.group(1)!r} parameter" + hint
        return "is not a URL redis-py can read" + hint
    for key, (low, high) in _URL_NUMBERS.items():
        value = kwargs.get(key)
        if value is not None and not low <= value <= high:
            return f"has a {key} parameter that is not a number from {low} to {high:g}" + hint
    connection_class = kwargs.pop("connection_class", Connection)
    try:
        connection_class(**kwargs)  # built, never connected
    except TypeError as exc:
        name = re.search(r"unexpected keyword argument '([^']*)'", str(exc))
        # A name is repeated only when the query is surely one: after an '@' that follows
        # the host, the "query" may be part of a password.
        surely = not hint and "@" not in url.partition("?")[2]
        what = f" ({name.group(1)!r})" if name is not None and surely else ""
        return f"has a query parameter redis-py does not take{what}{hint}"
    except Exception:
        return "has query parameters redis-py cannot use" + hint
    return None


def _sentinel_problem(url: str) -> str | None:
    from ._sentinel import parse_sentinel_url

    try:
        parts = urlsplit(url)
    except ValueError:
        return "is not a valid URL (an unbalanced [ or ] in a sentinel address)"
    if "@" not in parts.netloc and "@" in url[len("redis+sentinel://") + len(parts.netloc):]:
        return "cannot be read" + _ENCODE
    hosts = parts.netloc.rpartition("@")[2]
    if any(c.isspace() for c in hosts):
        return "has whitespace in a sentinel address"
    try:
        parse_sentinel_url(url)
    except ValueError as exc:
        return str(exc)
    return None


def _resolve_exception(item: Any) -> type[BaseException]:
    if isinstance(item, type) and issubclass(item, BaseException):
        return item
    if isinstance(item, str):
        module, _, name = item.rpartition(".")
        if not module:
            raise ImportError(f"{item!r} is not a dotted path")
        obj = getattr(importlib.import_module(module), name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            return obj
        raise ImportError(f"{item!r} is not an exception class")
    raise ImportError(f"{item!r} is neither an exception class nor a dotted path")


def _accepts(check: Callable[[Any], bool], value: Any) -> bool:
    try:
        return check(value)
    except Exception:  # a path-like whose __fspath__ raises, a value that cannot compare
        return False


def _braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def validate_settings(values: Mapping[str, Any]) -> list[Problem]:
    """Return every problem with one breaker's settings (upper-case keys)."""
    problems: list[Problem] = []
    for key in values:
        if key not in _BY_KEY:
            close = difflib.get_close_matches(str(key), list(_BY_KEY), n=1)
            hint = f"Did you mean {close[0]!r}? " if close else ""
            problems.append(Problem(str(key), "unknown", f"unknown setting {key!r}",
                                    f"{hint}Valid keys: {', '.join(_BY_KEY)}.".replace("{", "{{")
                                    .replace("}", "}}")))
    for spec in SETTINGS:
        if spec.key not in values:
            continue
        value = values[spec.key]
        if value is None and spec.nullable:
            continue
        bad_type = not isinstance(value, spec.types) or (
            isinstance(value, bool) and bool not in spec.types
        )
        if bad_type:
            problems.append(Problem(
                spec.key, "type",
                "{key} is " + _braces(shown(value)),
                "Set {key} to " + spec.type_name
                + (" or None." if spec.nullable else "."),
            ))
            continue
        if spec.check is not None and not _accepts(spec.check, value):
            problems.append(Problem(spec.key, "value",
                                    "{key} is " + _braces(shown(value).partition(" ")[2]),
                                    "Set {key} to a value " + spec.rule + "."))
            continue
        if spec.key == "URL":
            why = url_problem(value)
            if why:
                problems.append(Problem(spec.key, "value",
                                        "{key} " + _braces(f"{redact_url(value)!r} {why}"),
                                        _URL_FIX))
        if spec.key in ("COUNT_EXCEPTIONS", "EXCLUDE_EXCEPTIONS"):
            for item in value:
                try:
                    _resolve_exception(item)
                except (ImportError, AttributeError) as exc:
                    problems.append(Problem(spec.key, "import",
                                            "{key} entry " + _braces(f"{item!r}: {exc}"),
                                            "List exception classes or importable dotted paths "
                                            "such as 'redis.exceptions.ResponseError'."))
    reset = values.get("RESET_TIMEOUT", _BY_KEY["RESET_TIMEOUT"].default)
    ceiling = values.get("MAX_RESET_TIMEOUT", _BY_KEY["MAX_RESET_TIMEOUT"].default)
    if (
        not any(p.key in ("RESET_TIMEOUT", "MAX_RESET_TIMEOUT") for p in problems)
        and isinstance(reset, _NUM) and isinstance(ceiling, _NUM) and ceiling < reset
    ):
        problems.append(Problem("MAX_RESET_TIMEOUT", "consistency",
                                f"{{key}} ({ceiling}) is below the first open interval ({reset})",
                                "Make {key} at least the first open interval (RESET_TIMEOUT)."))
    return problems


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """How one breaker trips, waits and recovers.

    Field names are the lower-case names of the ``REDIS_BREAKERS`` settings;
    invalid values raise ``ValueError`` naming the field.
    """

    url: str | None = None
    failure_threshold: int = 5
    failure_rate: float | None = 0.5
    window: float = 10.0
    minimum_calls: int = 20
    slow_call_threshold: float | None = None
    reset_timeout: float = 0.5
    max_reset_timeout: float = 30.0
    half_open_max_calls: int = 1
    success_threshold: int = 2
    probe: bool = True
    probe_timeout: float = 0.25
    probe_interval: float = 0.25
    host_shared: bool = True
    state_dir: str | None = None
    count_exceptions: tuple[type[BaseException] | str, ...] = ()
    exclude_exceptions: tuple[type[BaseException] | str, ...] = ()
    #: Resolved exception classes (filled from the two fields above).
    counted: tuple[type[BaseException], ...] = field(default=(), init=False, repr=False,
                                                     compare=False)
    excluded: tuple[type[BaseException], ...] = field(default=(), init=False, repr=False,
                                                      compare=False)

    def __post_init__(self) -> None:
        remember_url(self.url)  # masked from here on, wherever it shows
        values = {spec.key: getattr(self, spec.field) for spec in SETTINGS}
        problems = validate_settings(values)
        if problems:
            p = problems[0]
            field_name = p.key.lower()
            raise ValueError(f"BreakerConfig.{field_name}: {p.message(field_name)}. "
                             f"{p.fix(field_name)}")
        if self.state_dir is not None:
            object.__setattr__(self, "state_dir", os.fspath(self.state_dir))
        object.__setattr__(self, "count_exceptions", tuple(self.count_exceptions))
        object.__setattr__(self, "exclude_exceptions", tuple(self.exclude_exceptions))
        object.__setattr__(self, "counted",
                           tuple(_resolve_exception(e) for e in self.count_exceptions))
        object.__setattr__(self, "excluded",
                           tuple(_resolve_exception(e) for e in self.exclude_exceptions))

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{spec.field}={redact_value(getattr(self, spec.field))!r}" for spec in SETTINGS
            if getattr(self, spec.field) != spec.default
        )
        return redact(f"BreakerConfig({fields})")

    @classmethod
    def from_settings(cls, values: Mapping[str, Any] | None) -> BreakerConfig:
        """Build a config from one ``REDIS_BREAKERS`` entry (upper-case keys)."""
        values = dict(values or {})
        problems = [p for p in validate_settings(values) if p.kind == "unknown"]
        if problems:
            raise ValueError(f"{problems[0].message()}. {problems[0].fix()}")
        kwargs: dict[str, Any] = {
            k.lower(): (tuple(v) if isinstance(v, list) else v) for k, v in values.items()
        }
        return cls(**kwargs)

    def replace(self, **changes: Any) -> BreakerConfig:
        return dataclasses.replace(self, **changes)
