"""System checks for ``REDIS_BREAKERS`` and the integrations' settings.

Ids are stable; each is documented in docs/configuration.md and asserted by a test.

- ``redis_breaker.E001``: ``REDIS_BREAKERS`` is not a dict.
- ``redis_breaker.E002``: a breaker's name is not a string or its entry is not a dict.
- ``redis_breaker.E003``: unknown key in a breaker's entry.
- ``redis_breaker.E004``: a value of the wrong type.
- ``redis_breaker.E005``: a value out of range or malformed (``URL``).
- ``redis_breaker.E006``: values that contradict each other.
- ``redis_breaker.E007``: an exception path that cannot be imported.
- ``redis_breaker.E010``: a ``BreakerCache`` whose ``PRIMARY`` is missing or names no alias.
- ``redis_breaker.E011``: a ``BreakerCache`` ``PRIMARY`` that is not a Redis cache.
- ``redis_breaker.E012``: a ``BreakerCache`` ``FALLBACK`` that names no alias.
- ``redis_breaker.E013``: a ``BreakerCache`` ``FALLBACK`` that is a Redis cache or the primary.
- ``redis_breaker.E014``: a ``BreakerCache`` ``OPTIONS`` that is not a dict or has an unknown key.
- ``redis_breaker.E015``: a ``BreakerCache`` ``BREAKER`` that is not a string.
- ``redis_breaker.E016``: a ``BreakerCache`` ``JOURNAL_MAX_KEYS`` that is not a positive integer.
- ``redis_breaker.E017``: a django-redis ``PRIMARY`` that ignores exceptions.
- ``redis_breaker.E018``: a Sentinel ``PRIMARY`` from which no probe URL can be built, and no ``URL``.
- ``redis_breaker.E020``: a ``BreakerChannelLayer`` ``breaker`` that is not a breaker name.
- ``redis_breaker.E021``: a ``BreakerChannelLayer`` ``CONFIG`` without usable ``hosts``.
- ``redis_breaker.E022``: a Sentinel host from which no probe URL can be built, and no ``URL``.
- ``redis_breaker.E023``: a ``BreakerChannelLayer`` host address redis-py cannot use.
- ``redis_breaker.E030``: ``CELERY_REDIS_BREAKER_FALLBACK`` is not a fallback policy.
- ``redis_breaker.E031``: ``CELERY_REDIS_BREAKER_NAME`` is not a string.
- ``redis_breaker.E032``: ``CELERY_REDIS_BREAKER_TIMEOUT`` is not a positive number.
- ``redis_breaker.E033``: ``CELERY_REDIS_BREAKER_RELAY_INTERVAL`` is not a number of seconds.
- ``redis_breaker.E034``: ``CELERY_REDIS_BREAKER_ONCE`` is not a bool.
- ``redis_breaker.E035``: ``CELERY_REDIS_BREAKER_ONCE_TTL`` is not a number of seconds.
- ``redis_breaker.E036``: ``CELERY_BROKER_URL`` is a Redis URL redis-py cannot use.
- ``redis_breaker.E037``: ``CELERY_RESULT_BACKEND`` is a Redis URL redis-py cannot use.
- ``redis_breaker.E040``: a URL of a ``BreakerCache`` primary's ``LOCATION`` redis-py cannot use.
- ``redis_breaker.W001``: a ``BreakerCache`` primary without socket timeouts.
- ``redis_breaker.W002``: a ``BreakerChannelLayer`` host without socket timeouts.
- ``redis_breaker.W003``: a host-wide breaker's state directory (``STATE_DIR``, or the
  default one) that the engine would refuse: not a directory of this user, open to group or
  others, not writable, or a path that cannot be created.
- ``redis_breaker.W030``: the outbox's database is SQLite without the settings it relies on.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from django.core.checks import CheckMessage, Error, Tags, register
from django.core.checks import Warning as CheckWarning

from . import _shared
from ._config import validate_settings
from .cache.checks import check_caches
from .checks_common import setting_path
from .conf import conf
from .outbox_checks import check_outbox_database

__all__ = ["check_breakers", "check_caches", "check_celery", "check_channel_layers",
           "check_state_dirs"]

_IDS = {
    "unknown": "redis_breaker.E003",
    "type": "redis_breaker.E004",
    "value": "redis_breaker.E005",
    "consistency": "redis_breaker.E006",
    "import": "redis_breaker.E007",
}

# The BreakerCache checks live with the cache (redis_breaker.cache.checks); registered here.
register(check_caches, Tags.caches)
# The outbox's database (W030): SQLite without the settings the outbox relies on.
register(check_outbox_database)


@register(Tags.caches)
def check_breakers(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    breakers = conf.REDIS_BREAKERS
    if breakers is None:
        return []
    if not isinstance(breakers, dict):
        return [Error(
            f"REDIS_BREAKERS is {type(breakers).__name__}, not a dict.",
            hint='Set REDIS_BREAKERS = {"default": {"URL": "redis://..."}}, '
                 "one entry per breaker name.",
            id="redis_breaker.E001",
        )]
    errors: list[CheckMessage] = []
    for name, entry in breakers.items():
        if not isinstance(name, str) or not isinstance(entry, dict):
            errors.append(Error(
                f"REDIS_BREAKERS[{name!r}] must map a breaker name (str) to a dict of settings; "
                f"got {type(entry).__name__}.",
                hint=f'Write REDIS_BREAKERS["{name}"] = {{"URL": "redis://...", ...}}.',
                id="redis_breaker.E002",
            ))
            continue
        for problem in validate_settings(entry):
            errors.append(Error(
                f'REDIS_BREAKERS["{name}"]["{problem.key}"]: {problem.message()}.',
                hint=problem.fix(),
                id=_IDS[problem.kind],
            ))
    return errors


# ------------------------------------------------------------ state directories
_LOST = ("The breakers' state would not be shared by the host's processes: each process "
         "would keep its own, after a WARNING host_state_unavailable")


def _state_dirs() -> dict[str, list[str]]:
    """Each state directory a host-wide breaker uses, with the breakers that set it.

    The default directory is always there (with no names when no breaker sets
    it): breakers that ``REDIS_BREAKERS`` does not name use it too. A
    ``STATE_DIR`` or ``HOST_SHARED`` of the wrong type or a relative path is
    ``E004``/``E005``'s, not this check's.
    """
    dirs: dict[str, list[str]] = {_shared.default_state_dir(): []}
    breakers = conf.REDIS_BREAKERS
    if not isinstance(breakers, dict):
        return dirs
    for name, entry in breakers.items():
        if not isinstance(name, str) or not isinstance(entry, dict):
            continue
        if entry.get("HOST_SHARED", True) is not True:
            continue
        directory = entry.get("STATE_DIR")
        if isinstance(directory, os.PathLike):
            try:
                directory = os.fspath(directory)
            except Exception:  # E004/E005 report it
                continue
        if isinstance(directory, str) and os.path.isabs(directory) and "\x00" not in directory:
            dirs.setdefault(directory, []).append(name)
    return dirs


def _unusable(directory: str) -> tuple[str, str] | None:
    """Why the engine would refuse ``directory`` (``_shared``'s rules) and the fix, or None."""
    try:
        info = os.lstat(directory)
    except (FileNotFoundError, NotADirectoryError):
        return _not_creatable(directory)
    except OSError as exc:
        return (f"cannot be read ({exc.strerror})",
                "Give the user the processes run as access to it, or point STATE_DIR elsewhere.")
    uid = os.getuid()
    if stat.S_ISLNK(info.st_mode):
        return ("is a symbolic link; the state directory must be a directory itself",
                "Point STATE_DIR at the real directory.")
    if not stat.S_ISDIR(info.st_mode):
        return ("is not a directory", "Point STATE_DIR at a directory (it is created when missing).")
    if info.st_uid != uid:
        return (f"belongs to uid {info.st_uid}, not to uid {uid} (the user these processes "
                "run as)",
                f"Point STATE_DIR at a directory of uid {uid} (it is created 0700 when missing), "
                "or remove this one if nobody should own it.")
    if info.st_mode & 0o077:
        return (f"has mode {stat.S_IMODE(info.st_mode):o}: group or others can reach the "
                "state files; it must be private to its owner (0700)",
                "Point STATE_DIR at a directory of its own, such as "
                f"{os.path.join(directory, 'redis-breaker')} (created 0700 when missing), or run "
                f"chmod 700 {directory} if nothing else uses it.")
    if not os.access(directory, os.W_OK | os.X_OK):
        return ("is not writable by its owner",
                f"Run chmod 700 {directory} as uid {uid}.")
    return None


def _not_creatable(directory: str) -> tuple[str, str] | None:
    """None when ``directory`` can be created (its nearest existing parent lets this user)."""
    parent = os.path.dirname(directory)
    while parent != os.path.dirname(parent) and not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    fix = ("Set STATE_DIR to an absolute path this user can create, or create it as the user "
           f"the processes run as (mkdir -m 700 {directory}).")
    if not os.path.isdir(parent):
        return f"does not exist and cannot be created: {parent} is not a directory", fix
    if not os.access(parent, os.W_OK | os.X_OK):
        return (f"does not exist and cannot be created: {parent} is not writable by uid "
                f"{os.getuid()} (or is on a read-only file system)", fix)
    return None


@register()
def check_state_dirs(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The state directory of every host-wide breaker is one the engine will use.

    Checked as the engine checks it when a breaker attaches (``_shared``), without
    creating anything: a directory of this user, private to it (0700), writable;
    or a path whose nearest existing parent lets this user create it.
    """
    found: list[CheckMessage] = []
    for directory, names in _state_dirs().items():
        problem = _unusable(directory)
        if problem is None:
            continue
        why, fix = problem
        if names:
            where = setting_path("REDIS_BREAKERS", names[0], "STATE_DIR")
            others = f" (also the STATE_DIR of {', '.join(map(repr, names[1:]))})" \
                if names[1:] else ""
            subject = f"{where} {directory!r}{others}"
        else:
            subject = (f"The default state directory {directory!r} (of every breaker whose "
                       "STATE_DIR is not set)")
        found.append(CheckWarning(
            f"{subject} {why}. {_LOST}.",
            hint=f"{fix} Or set HOST_SHARED to False to keep each process's state to itself.",
            id="redis_breaker.W003",
        ))
    return found


# ------------------------------------------------------------------ Channels
@register()
def check_channel_layers(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every ``BreakerChannelLayer`` in ``CHANNEL_LAYERS`` (``redis_breaker.channels.checks``)."""
    from importlib.util import find_spec

    if find_spec("channels_redis") is None:  # Channels is not installed: no such layer can run
        return []
    from .channels.checks import check_channel_layers as check_layers

    return check_layers()


# ------------------------------------------------------------------ Celery
@register()
def check_celery(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The ``CELERY_REDIS_BREAKER_*`` Django settings (Celery's ``CELERY`` namespace)."""
    from .health import celery_outbox

    if celery_outbox() is None:  # Celery is not installed: the settings mean nothing
        return []
    from .celery.checks import check_settings

    return check_settings()
