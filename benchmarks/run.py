"""Run every benchmark in one go and collect the figures.

    python benchmarks/run.py [--quick] [--only engine,cache,...] [--out DIR]

(`nox -s bench` runs this after installing what it needs.) Each benchmark
module exposes ``main(argv) -> dict``; their figures are written to
``DIR/benchmarks.json``, with the seconds each took.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

BENCHMARKS = ["engine", "host", "cache", "celery", "channels"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a few minutes)")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    parser.add_argument("--out", type=Path, default=Path("drill-out"), help="output folder")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")

    report: dict[str, object] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": {},
    }
    failed = []
    seconds: dict[str, float] = {}
    report["seconds"] = seconds
    for name in chosen:
        path = HERE / f"bench_{name}.py"
        if not path.exists():
            print(f"\n== {name}: not available yet ({path.name} missing)")
            continue
        print(f"\n== {name} " + "=" * 60, flush=True)
        module = importlib.import_module(f"bench_{name}")
        began = time.monotonic()
        try:
            figures = module.main(["--quick"] if args.quick else [])
        except Exception as exc:  # report the others anyway, then fail
            print(f"!! {name} failed: {type(exc).__name__}: {exc}", flush=True)
            failed.append(name)
            continue
        finally:
            took = time.monotonic() - began
            seconds[name] = round(took, 1)
            print(f"\n== {name} took {took:.0f} s", flush=True)
        report["results"][name] = figures  # type: ignore[index]
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "benchmarks.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nFigures written to {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
