"""Helpers for the tests that start a Celery worker or beat subprocess of their own."""

from __future__ import annotations

from pathlib import Path

__all__ = ["worker_state_dir"]


def worker_state_dir(tmp_path: Path) -> str:
    """A breaker state directory (0700) for a worker subprocess, passed as ``RB_STATE_DIR``.

    The subprocess has none of the test's settings; without it, its breakers would share
    the user's default state directory with every other run on the machine.
    """
    folder = tmp_path / "worker-state"
    folder.mkdir(mode=0o700, exist_ok=True)
    return str(folder)
