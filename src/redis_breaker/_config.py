"""Breaker configuration: one frozen dataclass and the validation that both
``BreakerConfig`` (``ValueError``) and the Django system checks (``Error``) use.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = ["SETTINGS", "BreakerConfig", "Problem", "SettingSpec", "validate_settings"]

URL_SCHEMES = ("redis", "rediss", "unix", "valkey", "valkeys", "redis+sentinel")
_URL_FIX = ("Set {key} to a redis://, rediss:// or unix:// URL, or for Redis Sentinel to "
            "redis+sentinel://host:port,host:port/master_name.")


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


def _positive(v: Any) -> bool:
    return bool(v > 0)


def _non_negative(v: Any) -> bool:
    return bool(v >= 0)


def _rate(v: Any) -> bool:
    return bool(0 < v <= 1)


def _at_least_one(v: Any) -> bool:
    return bool(v >= 1)


_NUM = (int, float)

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
    SettingSpec("FAILURE_THRESHOLD", 5, (int,), "an integer", _at_least_one, "1 or more",
                "Consecutive counted failures that open the breaker."),
    SettingSpec("FAILURE_RATE", 0.5, _NUM, "a number", _rate, "greater than 0 and at most 1",
                "Failure rate over WINDOW that opens the breaker (None turns rate tripping off).",
                nullable=True),
    SettingSpec("WINDOW", 10.0, _NUM, "a number of seconds", _positive, "greater than 0",
                "Length of the sliding window, in seconds, for FAILURE_RATE; also how long a "
                "recovery must hold for the next trip to start from RESET_TIMEOUT again."),
    SettingSpec("MINIMUM_CALLS", 20, (int,), "an integer", _at_least_one, "1 or more",
                "Calls needed in the window before FAILURE_RATE can open the breaker."),
    SettingSpec("SLOW_CALL_THRESHOLD", None, _NUM, "a number of seconds", _positive,
                "greater than 0",
                "Calls slower than this many seconds count as failures (grey failures). "
                "None: speed is not judged.",
                nullable=True),
    SettingSpec("RESET_TIMEOUT", 0.5, _NUM, "a number of seconds", _positive, "greater than 0",
                "First open interval: how long trial traffic waits after a trip. Doubles (with "
                "jitter) on every failed half-open and on every trip within WINDOW seconds "
                "of a recovery (Redis flapping); the probe keeps PINGing every PROBE_INTERVAL."),
    SettingSpec("MAX_RESET_TIMEOUT", 30.0, _NUM, "a number of seconds", _positive,
                "greater than 0", "Ceiling of the growing open interval."),
    SettingSpec("HALF_OPEN_MAX_CALLS", 1, (int,), "an integer", _at_least_one, "1 or more",
                "Trial calls allowed at once while half-open; every other caller is rejected "
                "at once."),
    SettingSpec("SUCCESS_THRESHOLD", 2, (int,), "an integer", _at_least_one, "1 or more",
                "Successful trial calls that close the breaker."),
    SettingSpec("PROBE", True, (bool,), "True or False", None, "",
                "Run a background thread that PINGs URL while the breaker is open. "
                "Without it (or without a URL), real traffic makes the trial calls."),
    SettingSpec("PROBE_TIMEOUT", 0.25, _NUM, "a number of seconds", _positive, "greater than 0",
                "Connect and read timeout of each probe PING."),
    SettingSpec("PROBE_INTERVAL", 0.25, _NUM, "a number of seconds", _positive, "greater than 0",
                "How often the probe PINGs Redis while the breaker is open (jittered by 20 %), "
                "whatever the outage's length; also the spacing of its half-open trial calls."),
    SettingSpec("HOST_SHARED", True, (bool,), "True or False", None, "",
                "Share the breaker's state with every process of the host that uses the same "
                "breaker name and URL (a small memory-mapped file in STATE_DIR): one process's "
                "discovery opens it everywhere, one probe per host. False keeps the state in "
                "each process."),
    SettingSpec("STATE_DIR", None, (str, os.PathLike), "a directory path (str or Path)",
                os.path.isabs,
                "an absolute path",
                "Directory of the host-wide state files, created 0700 and private to the user "
                "the processes run as. None: redis-breaker-<uid> in the system's temp directory.",
                nullable=True),
    SettingSpec("COUNT_EXCEPTIONS", (), (list, tuple), "a list of exception classes or dotted paths",
                None, "", "Extra exception types that count as failures."),
    SettingSpec("EXCLUDE_EXCEPTIONS", (), (list, tuple), "a list of exception classes or dotted paths",
                None, "", "Exception types that never count, even when they would by default."),
)

_BY_KEY = {s.key: s for s in SETTINGS}


def _check_url(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in URL_SCHEMES:
        return f"has scheme {parts.scheme!r}; expected one of {', '.join(URL_SCHEMES)}"
    if parts.scheme == "redis+sentinel":
        from ._sentinel import parse_sentinel_url

        try:
            parse_sentinel_url(url)
        except ValueError as exc:
            return str(exc)
        return None
    if parts.scheme != "unix" and not parts.hostname:
        return "has no host"
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
                "{key} is " + _braces(f"{type(value).__name__} {value!r}"),
                "Set {key} to " + spec.type_name
                + (" or None." if spec.nullable else "."),
            ))
            continue
        if spec.check is not None and not spec.check(value):
            problems.append(Problem(spec.key, "value", "{key} is " + _braces(repr(value)),
                                    "Set {key} to a value " + spec.rule + "."))
            continue
        if spec.key == "URL":
            why = _check_url(value)
            if why:
                from ._redact import redact

                problems.append(Problem(spec.key, "value",
                                        "{key} " + _braces(f"{redact(value)!r} {why}"),
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
        from ._redact import redact

        fields = ", ".join(
            f"{spec.field}={getattr(self, spec.field)!r}" for spec in SETTINGS
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
