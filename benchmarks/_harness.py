"""The project's test harness (``tests/harness``: real redis-servers and their faults), for the benchmarks."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from tests.harness import RedisServer, free_port, wait_until  # noqa: E402

__all__ = ["RedisServer", "free_port", "wait_until"]
