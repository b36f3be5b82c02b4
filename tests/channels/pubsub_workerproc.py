"""``workerproc``'s sender and consumer through ``BreakerPubSubChannelLayer``.

    python -m tests.channels.pubsub_workerproc send|receive --url URL --state-dir DIR
        --channel NAME --out FILE --control DIR [--count N] [--interval S]

The same roles and output lines as ``tests/channels/workerproc.py``; the sender
also reports ``{"uncertain": k}`` (publishes that failed after they may have
reached Redis: not published again, counted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from redis_breaker import Breaker, BreakerConfig
from redis_breaker.channels import BreakerPubSubChannelLayer
from tests.channels import workerproc


def make_layer(args: argparse.Namespace) -> BreakerPubSubChannelLayer:
    breaker = Breaker("workers", BreakerConfig(
        reset_timeout=0.05, max_reset_timeout=0.2, probe_timeout=0.25, failure_rate=None,
        state_dir=args.state_dir))
    hosts = [{"address": args.url, "socket_timeout": workerproc.SOCKET_TIMEOUT,
              "socket_connect_timeout": workerproc.SOCKET_TIMEOUT}]
    return BreakerPubSubChannelLayer(hosts, breaker=breaker, capacity=1000, expiry=120)


async def receive(args: argparse.Namespace, out: Any) -> None:
    layer = make_layer(args)
    control = Path(args.control)
    started = time.monotonic()
    print(json.dumps({"ready": True}), file=out, flush=True)
    receiving = asyncio.ensure_future(layer.receive(args.channel))
    while not (control / "exit").exists() and time.monotonic() - started < workerproc.LIFETIME_S:
        done, _ = await asyncio.wait((receiving,), timeout=0.5)
        if not done:
            continue
        print(json.dumps({"got": receiving.result()["n"]}), file=out, flush=True)
        receiving = asyncio.ensure_future(layer.receive(args.channel))
    receiving.cancel()
    await asyncio.wait((receiving,))
    await layer.close()


async def send(args: argparse.Namespace, out: Any) -> None:
    layer = make_layer(args)

    class Reporting:
        def __getattr__(self, name: str) -> Any:
            return getattr(layer, name)

        @property
        def pending(self) -> Any:
            print(json.dumps({"uncertain": layer.uncertain}), file=out, flush=True)
            return layer.pending

    original = workerproc.make_layer
    workerproc.make_layer = lambda _args: Reporting()  # type: ignore[assignment,return-value]
    try:
        await workerproc.send(args, out)
    finally:
        workerproc.make_layer = original


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
