"""The configuration reference documents every setting and every check id."""

from __future__ import annotations

import re
from pathlib import Path

from redis_breaker import checks
from redis_breaker._config import SETTINGS

DOC = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()


def test_every_setting_is_documented_with_its_default() -> None:
    """Each setting has a row in docs/configuration.md giving its default."""
    for spec in SETTINGS:
        row = re.search(rf"^\| `{spec.key}` \| ([^|]+) \|", DOC, re.MULTILINE)
        assert row, f"{spec.key} is missing from docs/configuration.md"
        default = "None" if spec.default is None else repr(spec.default)
        assert default in row.group(1), f"{spec.key}: documented default {row.group(1)!r}"


def check_ids() -> set[str]:
    """Every system-check id named anywhere in the package (each integration has its own checks)."""
    package = Path(checks.__file__).parent
    return {check_id for path in package.rglob("*.py")
            for check_id in re.findall(r"redis_breaker\.[EW]\d{3}", path.read_text())}


def test_every_check_id_is_documented() -> None:
    """Each system-check id of the package appears in the reference."""
    ids = check_ids()
    assert {"redis_breaker.E001", "redis_breaker.E010", "redis_breaker.E020",
            "redis_breaker.E030", "redis_breaker.W001"} <= ids
    for check_id in ids:
        assert f"`{check_id}`" in DOC, f"{check_id} is not documented"
