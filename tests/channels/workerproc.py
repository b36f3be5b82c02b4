"""A sender or a consumer of one worker channel, in a process of its own.

    python -m tests.channels.workerproc send|receive --url URL --state-dir DIR
        --channel NAME --out FILE --control DIR [--count N] [--interval S]

``send`` sends ``{"type": "work", "n": n}`` for n in 0..count-1, one every
``interval`` seconds, through a ``BreakerChannelLayer`` whose breaker shares
the host-wide state in ``--state-dir``; while ``<control>/pause`` exists it
sends nothing. It writes one JSON line per call (``{"sent": n}`` or
``{"raised": n, "error": ...}``, ``{"paused": n}`` when it sees the pause) and, every 0.1 s, ``{"pending": k,
"state": s}``; once done it stays until ``<control>/exit`` exists, so its
kept messages can be forwarded. ``receive`` writes ``{"got": n}`` for every
message of the channel until ``<control>/exit`` exists.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

from redis_breaker import Breaker, BreakerConfig
from redis_breaker.channels import BreakerChannelLayer, metrics

LIFETIME_S = 300.0
SOCKET_TIMEOUT = 0.5


def make_layer(args: argparse.Namespace) -> BreakerChannelLayer:
    breaker = Breaker("workers", BreakerConfig(
        reset_timeout=0.05, max_reset_timeout=0.2, probe_timeout=0.25, failure_rate=None,
        state_dir=args.state_dir))
    hosts = [{"address": args.url, "socket_timeout": SOCKET_TIMEOUT,
              "socket_connect_timeout": SOCKET_TIMEOUT}]
    return BreakerChannelLayer(hosts, breaker=breaker, capacity=1000, expiry=120)


async def send(args: argparse.Namespace, out: Any) -> None:
    layer = make_layer(args)
    control = Path(args.control)
    started = time.monotonic()

    async def report() -> None:
        while True:
            print(json.dumps({"pending": len(getattr(layer, "pending", ())),
                              "state": layer.breaker.state.value,
                              "forwarded": layer.forwarded, "expired": layer.expired}),
                  file=out, flush=True)
            await asyncio.sleep(0.1)

    reporter = asyncio.ensure_future(report())
    n = 0
    paused = False
    while n < args.count:
        if (control / "pause").exists():
            if not paused:
                print(json.dumps({"paused": n}), file=out, flush=True)
                paused = True
            await asyncio.sleep(0.02)
            continue
        paused = False
        kept = metrics.counts().get((layer.breaker.name, "kept"), 0)
        try:
            await layer.send(args.channel, {"type": "work", "n": n})
        except Exception as exc:
            print(json.dumps({"raised": n, "error": repr(exc)}), file=out, flush=True)
        else:
            # Whether Redis took it, or the layer kept it to forward later.
            kept = metrics.counts().get((layer.breaker.name, "kept"), 0) - kept
            print(json.dumps({"sent": n, **({"kept": kept} if kept else {})}), file=out,
                  flush=True)
        n += 1
        await asyncio.sleep(args.interval)
    print(json.dumps({"done": n}), file=out, flush=True)
    while not (control / "exit").exists() and time.monotonic() - started < LIFETIME_S:
        await asyncio.sleep(0.05)
    reporter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reporter
    await layer.close()


async def receive(args: argparse.Namespace, out: Any) -> None:
    layer = make_layer(args)
    control = Path(args.control)
    started = time.monotonic()
    duplicates = 0
    while not (control / "exit").exists() and time.monotonic() - started < LIFETIME_S:
        try:
            message = await asyncio.wait_for(layer.receive(args.channel), 0.5)
        except asyncio.TimeoutError:
            continue
        finally:
            if layer.duplicates != duplicates:  # second copies the layer dropped
                duplicates = layer.duplicates
                print(json.dumps({"duplicates": duplicates}), file=out, flush=True)
        print(json.dumps({"got": message["n"]}), file=out, flush=True)
    await layer.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("send", "receive"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--channel", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--control", required=True)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.02)
    args = parser.parse_args()
    with open(args.out, "a") as out:
        asyncio.run((send if args.role == "send" else receive)(args, out))


if __name__ == "__main__":
    main()
