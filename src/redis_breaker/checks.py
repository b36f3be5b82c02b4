"""System checks for ``REDIS_BREAKERS``.

Ids are stable; each is documented in docs/configuration.md and asserted by a test.

- ``redis_breaker.E001``: ``REDIS_BREAKERS`` is not a dict.
- ``redis_breaker.E002``: a breaker's name is not a string or its entry is not a dict.
- ``redis_breaker.E003``: unknown key in a breaker's entry.
- ``redis_breaker.E004``: a value of the wrong type.
- ``redis_breaker.E005``: a value out of range or malformed (``URL``).
- ``redis_breaker.E006``: values that contradict each other.
- ``redis_breaker.E007``: an exception path that cannot be imported.
"""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Tags, register

from ._config import validate_settings
from .conf import conf

__all__ = ["check_breakers"]

_IDS = {
    "unknown": "redis_breaker.E003",
    "type": "redis_breaker.E004",
    "value": "redis_breaker.E005",
    "consistency": "redis_breaker.E006",
    "import": "redis_breaker.E007",
}


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
