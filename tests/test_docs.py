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


def test_every_check_id_is_documented() -> None:
    """Each system-check id in checks.py appears in the reference."""
    ids = set(re.findall(r"redis_breaker\.E\d{3}", Path(checks.__file__).read_text()))
    assert ids
    for check_id in ids:
        assert f"`{check_id}`" in DOC, f"{check_id} is not documented"
