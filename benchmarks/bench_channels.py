"""channels_redis and BreakerChannelLayer side by side, in one run, on a real Redis.

    python benchmarks/bench_channels.py [--quick] [--json PATH]

1. healthy Redis: group_send latency through both layers;
2. outage (refused = stopped, hung = SIGSTOP, blackhole = packets dropped,
   where root): group_send latency for channels_redis, and for
   BreakerChannelLayer once its breaker is open (p50/p99/max), with what it
   cost to find the outage;
3. local delivery rate while open: deliveries per second to consumers of
   this process, next to the healthy rate through Redis.

Both layers get the same hosts entry: redis-py 8's default 5 s socket
timeouts written out (1 s with --quick, to keep the run short).

    python benchmarks/bench_channels.py --pubsub [--quick] [--json PATH]

does the same for channels_redis's pub/sub layer: ``RedisPubSubChannelLayer``
and ``BreakerPubSubChannelLayer`` side by side on a healthy Redis
(send+receive on a specific channel, group_send to 10 members and their
receives), then BreakerPubSubChannelLayer's calls once its breaker is open
(refused, hung), next to what channels_redis's pub/sub layer does there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer

sys.path.insert(0, str(Path(__file__).parent))
from _common import percentiles, print_table, progress
from _harness import RedisServer
from redis_breaker import Breaker, BreakerConfig
from redis_breaker.channels import BreakerChannelLayer, BreakerPubSubChannelLayer

GROUP = "bench"
MEMBERS = 10
MESSAGE = {"type": "chat.message", "text": "hello", "n": 1}
TARGET_P99_MS = 0.2


def _hosts(server: RedisServer, timeout: float) -> list[dict[str, Any]]:
    return [{"address": server.url, "socket_timeout": timeout, "socket_connect_timeout": timeout}]


async def _join(layer: Any) -> list[str]:
    channels = [await layer.new_channel() for _ in range(MEMBERS)]
    for channel in channels:
        await layer.group_add(GROUP, channel)
    return channels


async def _timed(call: Callable[[], Awaitable[object]]) -> tuple[float, str | None]:
    start = time.perf_counter()
    try:
        await call()
    except Exception as exc:
        return time.perf_counter() - start, type(exc).__name__
    return time.perf_counter() - start, None


def _row(fault: str, layer: str, durations: list[float], errors: list[str | None]) -> dict[str, Any]:
    raised = sorted({e for e in errors if e})
    return {"fault": fault, "layer": layer, "calls": len(durations), **percentiles(durations),
            "raised": len([e for e in errors if e]), "errors": raised}


async def healthy(server: RedisServer, timeout: float, calls: int) -> list[dict[str, Any]]:
    plain = RedisChannelLayer(hosts=_hosts(server, timeout))
    breaker = Breaker("bench-healthy", BreakerConfig())
    ours = BreakerChannelLayer(_hosts(server, timeout), breaker=breaker)
    contestants = (("channels_redis", plain), ("BreakerChannelLayer", ours))
    samples: dict[str, list[tuple[float, str | None]]] = {name: [] for name, _ in contestants}
    pairs: dict[str, list[tuple[float, str | None]]] = {name: [] for name, _ in contestants}
    specific = {}
    for name, layer in contestants:
        await _join(layer)
        specific[name] = await layer.new_channel()

    async def send_receive(layer: Any, channel: str) -> None:
        await layer.send(channel, MESSAGE)
        await layer.receive(channel)

    for _ in range(calls):  # interleaved, so both see the same server and machine
        for name, layer in contestants:
            samples[name].append(await _timed(lambda layer=layer: layer.group_send(GROUP, MESSAGE)))
            pairs[name].append(await _timed(
                lambda layer=layer, name=name: send_receive(layer, specific[name])))
    rows = [_row("none (healthy)", name, [d for d, _ in samples[name]],
                 [e for _, e in samples[name]]) for name, _ in contestants]
    rows += [_row("send+receive (healthy)", name, [d for d, _ in pairs[name]],
                  [e for _, e in pairs[name]]) for name, _ in contestants]
    for _, layer in contestants:
        await layer.flush()
    await ours.close()
    breaker.reset()
    return rows


async def outage(server: RedisServer, fault: str, timeout: float, plain_calls: int,
                 open_calls: int) -> dict[str, Any]:
    """One fault: channels_redis's calls, then BreakerChannelLayer's discovery and open calls."""
    plain = RedisChannelLayer(hosts=_hosts(server, timeout))
    breaker = Breaker(f"bench-{fault}", BreakerConfig(failure_rate=None))
    ours = BreakerChannelLayer(_hosts(server, timeout), breaker=breaker)
    await _join(plain)
    ours_channels = await _join(ours)
    {"refused": server.stop, "hung": server.freeze, "blackhole": server.blackhole}[fault]()
    try:
        # Concurrent calls, so a hung server costs one timeout, not one per sample.
        plain_samples = await asyncio.gather(
            *(_timed(lambda: plain.group_send(GROUP, MESSAGE)) for _ in range(plain_calls)))

        started = time.perf_counter()
        discovery: list[tuple[float, str | None]] = []
        while not breaker.is_open and len(discovery) < 50:
            discovery += await asyncio.gather(
                *(_timed(lambda: ours.group_send(GROUP, MESSAGE))
                  for _ in range(breaker.config.failure_threshold)))
        to_open = time.perf_counter() - started
        opened = breaker.is_open
        delivered = sum(1 for c in ours_channels if ours.local.pop(c) is not None)

        open_samples = []
        for _ in range(open_calls):
            open_samples.append(await _timed(lambda: ours.group_send(GROUP, MESSAGE)))
            for channel in ours_channels:  # drain outside the timing, as consumers would
                ours.local.pop(channel)
    finally:
        if fault == "hung":
            server.thaw()
        elif fault == "blackhole":
            server.unblackhole()
        if not server.running:
            server.start()
    with contextlib.suppress(Exception):
        await plain.close_pools()
    breaker.reset()
    await ours.close()
    return {
        "plain": _row(fault, "channels_redis", [d for d, _ in plain_samples],
                      [e for _, e in plain_samples]),
        "ours": _row(fault, "BreakerChannelLayer (open)", [d for d, _ in open_samples],
                     [e for _, e in open_samples]),
        "discovery": {"fault": fault, "calls": len(discovery), "seconds": to_open,
                      "raised": len([e for _, e in discovery if e]),
                      "opened": opened,
                      "first_local_deliveries": delivered},
    }


async def delivery_rate(layer: Any, messages: int) -> float:
    """Deliveries per second (one group message to MEMBERS receivers is MEMBERS deliveries)."""
    channels = await _join(layer)
    received = 0

    async def reader(channel: str) -> None:
        nonlocal received
        for _ in range(messages):
            await layer.receive(channel)
            received += 1

    readers = [asyncio.ensure_future(reader(c)) for c in channels]
    await asyncio.sleep(0.05)
    start = time.perf_counter()
    for _ in range(messages):
        await layer.group_send(GROUP, MESSAGE)
        await asyncio.sleep(0)  # let the consumers run, as a server's loop would
    await asyncio.wait_for(asyncio.gather(*readers), 60)
    elapsed = time.perf_counter() - start
    return received / elapsed


async def rates(server: RedisServer, timeout: float, messages: int) -> dict[str, float]:
    plain = RedisChannelLayer(hosts=_hosts(server, timeout), capacity=messages + 10)
    healthy_rate = await delivery_rate(plain, messages)
    await plain.flush()
    breaker = Breaker("bench-rate", BreakerConfig())
    ours = BreakerChannelLayer(_hosts(server, timeout), breaker=breaker, capacity=messages + 10)
    breaker.force_open("benchmark: local delivery")
    open_rate = await delivery_rate(ours, messages)
    breaker.reset()
    await ours.close()
    return {"channels_redis_healthy_deliveries_per_s": healthy_rate,
            "breaker_layer_open_deliveries_per_s": open_rate}


async def run_healthy(calls: int) -> dict[str, Any]:
    with RedisServer() as server:
        return {"socket_timeout_s": 5.0, "members": MEMBERS,
                "healthy": await healthy(server, 5.0, calls)}


async def run(quick: bool) -> dict[str, Any]:
    timeout = 1.0 if quick else 5.0
    plain_calls = 5 if quick else 20
    open_calls = 2_000 if quick else 20_000
    report: dict[str, Any] = {"socket_timeout_s": timeout, "members": MEMBERS}
    with RedisServer() as server:
        progress("healthy group_send")
        report["healthy"] = await healthy(server, timeout, 200 if quick else 2_000)
        report["outages"] = []
        for fault in ("refused", "hung"):
            progress(f"outage: {fault}")
            report["outages"].append(await outage(server, fault, timeout, plain_calls, open_calls))
        progress("local delivery rate")
        report["delivery"] = await rates(server, timeout, 500 if quick else 5_000)

    can, why = RedisServer.can_blackhole() if hasattr(RedisServer, "blackhole") else (
        False, "the harness has no blackhole helper")
    if can:
        progress("outage: blackhole")
        with RedisServer(netns=True) as server:
            report["outages"].append(await outage(server, "blackhole", timeout, plain_calls,
                                                  open_calls))
    else:
        report["blackhole_skipped"] = why
    return report


def _ratios(report: dict[str, Any]) -> None:
    for fault, what in (("none (healthy)", "group_send"), ("send+receive (healthy)",
                                                       "send+receive")):
        by = {r["layer"]: r for r in report["healthy"] if r["fault"] == fault}
        print(f"  healthy {what}: BreakerChannelLayer / channels_redis = "
              f"{by['BreakerChannelLayer']['p50_ms'] / by['channels_redis']['p50_ms']:.2f}x "
              f"(p50), {by['BreakerChannelLayer']['p99_ms'] / by['channels_redis']['p99_ms']:.2f}x"
              " (p99)")


async def pubsub_healthy(server: RedisServer, timeout: float, calls: int) -> list[dict[str, Any]]:
    """Interleaved healthy calls through both pub/sub layers (one event loop, one Redis)."""
    plain = RedisPubSubChannelLayer(hosts=_hosts(server, timeout))
    breaker = Breaker("bench-pubsub-healthy", BreakerConfig())
    ours = BreakerPubSubChannelLayer(_hosts(server, timeout), breaker=breaker)
    contestants = (("RedisPubSubChannelLayer", plain), ("BreakerPubSubChannelLayer", ours))
    members = {name: await _join(layer) for name, layer in contestants}
    specific = {name: await layer.new_channel() for name, layer in contestants}
    groups: dict[str, list[tuple[float, str | None]]] = {name: [] for name, _ in contestants}
    fanout: dict[str, list[tuple[float, str | None]]] = {name: [] for name, _ in contestants}
    pairs: dict[str, list[tuple[float, str | None]]] = {name: [] for name, _ in contestants}

    async def send_receive(layer: Any, channel: str) -> None:
        await layer.send(channel, MESSAGE)
        await layer.receive(channel)

    async def group_round(layer: Any, channels: list[str]) -> None:
        await layer.group_send(GROUP, MESSAGE)
        for channel in channels:
            await layer.receive(channel)

    for _ in range(calls):
        for name, layer in contestants:
            groups[name].append(await _timed(lambda layer=layer: layer.group_send(GROUP, MESSAGE)))
            for channel in members[name]:  # drained outside the timing
                await layer.receive(channel)
            fanout[name].append(await _timed(
                lambda layer=layer, name=name: group_round(layer, members[name])))
            pairs[name].append(await _timed(
                lambda layer=layer, name=name: send_receive(layer, specific[name])))
    rows = []
    for fault, samples in (("group_send (healthy)", groups),
                           ("group_send + 10 receives (healthy)", fanout),
                           ("send+receive (healthy)", pairs)):
        rows += [_row(fault, name, [d for d, _ in samples[name]], [e for _, e in samples[name]])
                 for name, _ in contestants]
    for _, layer in contestants:
        await layer.flush()
    breaker.reset()
    return rows


async def pubsub_outage(server: RedisServer, fault: str, timeout: float, plain_calls: int,
                        open_calls: int) -> dict[str, Any]:
    """One fault: the plain pub/sub layer's group_send, then ours once its breaker is open."""
    plain = RedisPubSubChannelLayer(hosts=_hosts(server, timeout))
    breaker = Breaker(f"bench-pubsub-{fault}", BreakerConfig(failure_rate=None))
    ours = BreakerPubSubChannelLayer(_hosts(server, timeout), breaker=breaker)
    await _join(plain)
    channels = await _join(ours)
    queues = [ours._get_layer().channels[c] for c in channels]
    {"refused": server.stop, "hung": server.freeze}[fault]()
    try:
        plain_samples = await asyncio.gather(
            *(_timed(lambda: plain.group_send(GROUP, MESSAGE)) for _ in range(plain_calls)))
        started = time.perf_counter()
        discovery: list[tuple[float, str | None]] = []
        while not breaker.is_open and len(discovery) < 50:
            discovery += await asyncio.gather(
                *(_timed(lambda: ours.group_send(GROUP, MESSAGE))
                  for _ in range(breaker.config.failure_threshold)))
        to_open = time.perf_counter() - started
        group_samples, send_samples = [], []
        for _ in range(open_calls):
            group_samples.append(await _timed(lambda: ours.group_send(GROUP, MESSAGE)))
            send_samples.append(await _timed(lambda: ours.send(channels[0], MESSAGE)))
            for queue in queues:  # drained outside the timing, as consumers would
                while not queue.empty():
                    queue.get_nowait()
    finally:
        if fault == "hung":
            server.thaw()
        if not server.running:
            server.start()
    with contextlib.suppress(Exception):
        await plain.flush()
    breaker.reset()
    await ours.close()
    return {
        "plain": _row(fault, "RedisPubSubChannelLayer group_send",
                      [d for d, _ in plain_samples], [e for _, e in plain_samples]),
        "ours": _row(fault, "BreakerPubSubChannelLayer group_send (open)",
                     [d for d, _ in group_samples], [e for _, e in group_samples]),
        "ours_send": _row(fault, "BreakerPubSubChannelLayer send (open)",
                          [d for d, _ in send_samples], [e for _, e in send_samples]),
        "discovery": {"fault": fault, "calls": len(discovery), "seconds": to_open,
                      "raised": len([e for _, e in discovery if e])},
    }


async def run_pubsub(quick: bool) -> dict[str, Any]:
    timeout = 1.0 if quick else 5.0
    report: dict[str, Any] = {"socket_timeout_s": timeout, "members": MEMBERS, "outages": []}
    with RedisServer() as server:
        progress("pub/sub: healthy")
        report["healthy"] = await pubsub_healthy(server, timeout, 300 if quick else 3_000)
        for fault in ("refused", "hung"):
            progress(f"pub/sub outage: {fault}")
            report["outages"].append(await pubsub_outage(
                server, fault, timeout, 5, 2_000 if quick else 20_000))
    return report


def _print_pubsub(report: dict[str, Any]) -> None:
    header = ["call", "layer", "calls", "p50 ms", "p99 ms", "max ms", "raised"]
    print_table("Pub/sub layers, healthy Redis, side by side (interleaved calls)", header,
                [[r["fault"], r["layer"], r["calls"], r["p50_ms"], r["p99_ms"], r["max_ms"],
                  r["raised"]] for r in report["healthy"]])
    rows = []
    for o in report["outages"]:
        for key in ("plain", "ours", "ours_send"):
            r = o[key]
            rows.append([r["fault"], r["layer"], r["calls"], r["p50_ms"], r["p99_ms"],
                         r["max_ms"], r["raised"]])
    print_table(f"Pub/sub layers, Redis down, socket_timeout={report['socket_timeout_s']:g}s",
                ["fault", "layer", "calls", "p50 ms", "p99 ms", "max ms", "raised"], rows)
    print_table("Finding the outage (BreakerPubSubChannelLayer, calls until the breaker opened)",
                ["fault", "calls", "seconds", "raised"],
                [[o["discovery"]["fault"], o["discovery"]["calls"], o["discovery"]["seconds"],
                  o["discovery"]["raised"]] for o in report["outages"]])
    for fault in sorted({r["fault"] for r in report["healthy"]}):
        by = {r["layer"]: r for r in report["healthy"] if r["fault"] == fault}
        ours, plain = by["BreakerPubSubChannelLayer"], by["RedisPubSubChannelLayer"]
        print(f"  {fault}: BreakerPubSubChannelLayer / RedisPubSubChannelLayer = "
              f"{ours['p50_ms'] / plain['p50_ms']:.2f}x (p50), "
              f"{ours['p99_ms'] / plain['p99_ms']:.2f}x (p99)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer calls, 1 s socket timeouts")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--healthy", action="store_true",
                        help="only the healthy comparison (group_send, send+receive)")
    parser.add_argument("--pubsub", action="store_true",
                        help="channels_redis's pub/sub layer and BreakerPubSubChannelLayer")
    args = parser.parse_args(argv)
    # Transitions and fallback warnings are the subject here, not the output.
    logging.getLogger("redis_breaker").setLevel(logging.CRITICAL)
    if args.pubsub:
        # channels_redis's pub/sub receive task logs every failed read during an outage.
        logging.getLogger("channels_redis").setLevel(logging.CRITICAL)
        report = asyncio.run(run_pubsub(args.quick))
        _print_pubsub(report)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2))
        return report
    if args.healthy:
        report = asyncio.run(run_healthy(3_000))
        print_table("Healthy Redis, side by side (interleaved calls)",
                    ["call", "layer", "calls", "p50 ms", "p99 ms", "max ms", "raised"],
                    [[r["fault"], r["layer"], r["calls"], r["p50_ms"], r["p99_ms"], r["max_ms"],
                      r["raised"]] for r in report["healthy"]])
        _ratios(report)
        return report
    report = asyncio.run(run(args.quick))

    header = ["fault", "layer", "calls", "p50 ms", "p99 ms", "max ms", "raised"]
    rows = [[r["fault"], r["layer"], r["calls"], r["p50_ms"], r["p99_ms"], r["max_ms"], r["raised"]]
            for r in report["healthy"]]
    for o in report["outages"]:
        for key in ("plain", "ours"):
            r = o[key]
            rows.append([r["fault"], r["layer"], r["calls"], r["p50_ms"], r["p99_ms"],
                         r["max_ms"], r["raised"]])
    print_table(f"group_send to {MEMBERS} members, socket_timeout={report['socket_timeout_s']:g}s",
                header, rows)
    print_table("Finding the outage (BreakerChannelLayer, calls until the breaker opened)",
                ["fault", "calls", "seconds", "raised"],
                [[o["discovery"]["fault"], o["discovery"]["calls"], o["discovery"]["seconds"],
                  o["discovery"]["raised"]] for o in report["outages"]])
    d = report["delivery"]
    print_table(f"Delivery rate to {MEMBERS} consumers of this process "
                f"(deliveries/s; one group message = {MEMBERS} deliveries)",
                ["", "deliveries/s"],
                [["channels_redis, healthy Redis", d["channels_redis_healthy_deliveries_per_s"]],
                 ["BreakerChannelLayer, open (in-process)",
                  d["breaker_layer_open_deliveries_per_s"]]])
    _ratios(report)
    worst = max(o["ours"]["p99_ms"] for o in report["outages"])
    print(f"\n  BreakerChannelLayer open p99, worst fault: {worst * 1000:.0f} µs "
          f"(target < {TARGET_P99_MS * 1000:.0f} µs)")
    if "blackhole_skipped" in report:
        print(f"  blackhole skipped: {report['blackhole_skipped']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
