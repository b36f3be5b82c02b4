"""The worker app of test_chord_outage.py's nested canvas: test_calling.py's app with one more task.

``celery -A tests.celery.chord_app worker``: every task of ``calling_app``, and
``tests.collect``, a chord body that records the header results it gets, nested
as Celery gives them, and returns them.
"""

from __future__ import annotations

from typing import Any

from tests.celery.calling_app import _record, add, app

__all__ = ["add", "app", "collect"]


@app.task(bind=True, name="tests.collect")
def collect(self: Any, values: Any) -> Any:
    """The header results a chord's body gets, recorded and returned as they are."""
    _record(self, args=[values])
    return values
