"""The drill's report measures breaker timing from both sides of each fault action."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent.parent / "benchmarks"))

from drill_report import breaker_timing


@dataclass
class Timeline:
    """The parts of a drill run the report reads: phases and the breaker's transitions."""

    phases: list[dict[str, Any]] = field(default_factory=list)
    transitions: list[tuple[float, str]] = field(default_factory=list)

    def fault(self, name: str, at: float, cut: tuple[float, float],
              restore: tuple[float, float], length: float = 10.0) -> None:
        self.phases += [
            {"fault": name, "phase": "healthy", "start": at, "end": cut[0]},
            {"fault": name, "phase": "cut", "start": cut[0], "end": cut[1]},
            {"fault": name, "phase": "outage", "start": cut[1], "end": restore[0]},
            {"fault": name, "phase": "restored", "start": restore[0], "end": restore[1]},
            {"fault": name, "phase": "recovery", "start": restore[1],
             "end": restore[1] + length},
        ]


def test_an_opening_during_the_fault_action_counts_from_its_start() -> None:
    """A breaker that opened while the server was still shutting down opened 0.4 s after the cut began."""
    run = Timeline()
    run.fault("refused", 0.0, cut=(10.0, 12.5), restore=(22.5, 22.6))
    run.fault("hung", 32.6, cut=(42.6, 42.61), restore=(52.61, 52.62))
    run.transitions = [(10.4, "open"), (10.9, "half_open"), (11.2, "open"), (23.1, "half_open"),
                       (23.3, "closed"), (43.6, "open"), (53.0, "half_open"), (53.2, "closed")]
    timing = breaker_timing(run, "refused")
    assert timing == {"fault": "refused", "cut_took_s": 2.5, "open_after_cut_s": 0.4,
                      "restore_took_s": 0.1, "closed_after_restore_s": 0.8}
    assert breaker_timing(run, "hung")["open_after_cut_s"] == 1.0


def test_a_fault_never_borrows_the_next_faults_transitions() -> None:
    """A breaker that did not open (or close) in a fault's own window reports None, not a later fault's time."""
    run = Timeline()
    run.fault("refused", 0.0, cut=(10.0, 10.1), restore=(20.1, 20.2))
    run.fault("hung", 30.2, cut=(40.2, 40.3), restore=(50.3, 50.4))
    run.transitions = [(41.0, "open"), (51.0, "closed")]
    assert breaker_timing(run, "refused")["open_after_cut_s"] is None
    assert breaker_timing(run, "refused")["closed_after_restore_s"] is None
    assert breaker_timing(run, "hung")["open_after_cut_s"] == 0.8
    assert breaker_timing(run, "hung")["closed_after_restore_s"] == 0.7
