"""The probe of a redis+sentinel:// breaker finds the current master, on real sentinels."""

from __future__ import annotations

import pytest
import redis
from freezegun import freeze_time
from redis.backoff import NoBackoff
from redis.retry import Retry

from redis_breaker import Breaker, BreakerConfig, State
from redis_breaker._probe import PingClient, ping_url
from redis_breaker._sentinel import ping_sentinel
from redis_breaker.testing import capture_events
from tests.harness import RedisSentinelCluster, RedisServer, collected_garbage, free_port

from .conftest import wait_for


def _direct(server_client: redis.Redis) -> None:
    server_client.ping()


def _kill_master_under(breaker: Breaker, cluster: RedisSentinelCluster) -> RedisServer:
    """Kill the master and fail one call to it through ``breaker``; return the dead master."""
    old = cluster.kill_master()
    client = old.client(retry=Retry(NoBackoff(), 0))
    try:
        with pytest.raises(redis.ConnectionError):
            breaker.call(_direct, client)
    finally:
        client.close()
    return old


def test_the_probe_follows_the_master_through_a_failover(
        sentinel_cluster: RedisSentinelCluster) -> None:
    """Before: the master answers. Right after the kill: the sentinels still name the dead
    master and the probe fails. After the failover: the probe reaches the promoted replica."""
    cluster = sentinel_cluster
    first = cluster.master
    assert ping_sentinel(cluster.url, 0.5) == (first.host, first.port)
    old = cluster.kill_master()
    with pytest.raises(redis.ConnectionError):
        ping_url(cluster.url, 0.5)
    new = cluster.wait_for_failover(old)
    assert new is not old
    assert ping_sentinel(cluster.url, 0.5) == (new.host, new.port)
    with pytest.raises(redis.ConnectionError):
        ping_url(old.url, 0.5)  # a fixed address would never have answered again


def test_a_replica_named_as_master_fails_the_probe(
        sentinel_cluster: RedisSentinelCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mid-failover the sentinels can name a server that still answers ROLE as a replica:
    that is not a master to close the breaker on."""
    replica = sentinel_cluster.replicas[0]
    monkeypatch.setattr(redis.sentinel.Sentinel, "discover_master",
                        lambda self, name: (replica.host, replica.port))
    with pytest.raises(redis.ConnectionError, match="answers as 'slave'"):
        ping_url(sentinel_cluster.url, 0.5)


def test_no_sentinel_answering_fails_the_probe_without_the_password() -> None:
    """Every sentinel refused: MasterNotFoundError, a ConnectionError the breaker counts."""
    url = f"redis+sentinel://:hunter2@127.0.0.1:{free_port()},127.0.0.1:{free_port()}/mymaster"
    breaker = Breaker("nobody-home", BreakerConfig(url=url, probe=False, failure_threshold=1))
    breaker.force_open()
    breaker.reset()
    with pytest.raises(redis.sentinel.MasterNotFoundError):
        ping_url(url, 0.25)

    def refused() -> None:
        raise redis.ConnectionError("refused")

    with pytest.raises(redis.ConnectionError):
        breaker.call(refused)
    assert breaker.state is State.OPEN
    assert not breaker.probe_now()
    last_error = breaker.stats().last_error or ""
    assert "MasterNotFoundError" in last_error
    assert "hunter2" not in last_error


def test_engine_steps_through_a_failover_on_a_frozen_clock(
        sentinel_cluster: RedisSentinelCluster) -> None:
    """Time frozen: nothing moves by itself. A probe step while the sentinels still name the
    dead master fails and leaves the open interval as it was (detection is not backed off);
    after the failover, once the open interval has elapsed, one step half-opens on the new
    master and two trial steps (the clock moved on) close the breaker."""
    cluster = sentinel_cluster
    with freeze_time("2026-01-01 00:00:00") as clock:
        breaker = Breaker("frozen", BreakerConfig(url=cluster.url, probe=False,
                                                  failure_threshold=1, failure_rate=None,
                                                  reset_timeout=1.0, probe_timeout=0.5),
                          rng=lambda: 1.0)
        old = _kill_master_under(breaker, cluster)
        assert breaker.state is State.OPEN
        before = breaker.stats().retry_in_s
        assert not breaker.probe_now()
        assert breaker.state is State.OPEN
        assert breaker.stats().retry_in_s == before == 1.0
        new = cluster.wait_for_failover(old)
        assert breaker.state is State.OPEN  # a frozen clock: no half-open on its own
        clock.tick(1.0)
        with capture_events() as events:
            assert breaker.probe_now()
            assert breaker.state is State.HALF_OPEN
            clock.tick(0.5)
            assert breaker.probe_now()
            clock.tick(0.5)
            assert breaker.probe_now()
        assert breaker.state is State.CLOSED
        reasons = [(e["to_state"], e["reason"]) for e in events
                   if e["event"] == "breaker_state_changed"]
        assert reasons == [("half_open", "probe ok"), ("closed", "2 trial calls succeeded")]
        assert ping_sentinel(cluster.url, 0.5) == (new.host, new.port)


def test_the_probe_thread_alone_closes_the_breaker_on_the_new_master(
        sentinel_cluster: RedisSentinelCluster) -> None:
    """Real time, no user traffic after the trip: the background probe asks the sentinels
    until they name the promoted replica, then closes the breaker."""
    cluster = sentinel_cluster
    breaker = Breaker("thread", BreakerConfig(url=cluster.url, failure_threshold=1,
                                              failure_rate=None, reset_timeout=0.05,
                                              max_reset_timeout=0.5, probe_timeout=0.5))
    old = _kill_master_under(breaker, cluster)
    assert breaker.state is State.OPEN
    cluster.wait_for_failover(old)
    wait_for(lambda: breaker.state is State.CLOSED, what="the probe to close the breaker")


def test_the_probe_keeps_its_clients_and_leaves_no_garbage(
        sentinel_cluster: RedisSentinelCluster) -> None:
    """A breaker's probe client on a ``redis+sentinel://`` URL asks the sentinels and the
    master on new connections every PING and closes them after, and neither an answered
    PING nor a failed one leaves a client, pool or connection for the cyclic collector
    (whose ``__del__`` would run in whatever thread collects). After a failover it PINGs
    the new master."""
    cluster = sentinel_cluster
    pinger = PingClient(cluster.url, 5.0)  # long: an answered PING must not time out
    pinger.ping()  # the first makes the clients
    master = cluster.master
    watcher = master.client()
    before = watcher.info("stats")["total_connections_received"]
    with collected_garbage() as answered:
        for _ in range(10):
            pinger.ping()
    assert watcher.info("stats")["total_connections_received"] - before >= 10
    assert not [c for c in watcher.client_list() if c["cmd"] == "role"]  # each closed
    watcher.close()
    old = cluster.kill_master()
    with collected_garbage() as failed:
        for _ in range(3):
            with pytest.raises(redis.ConnectionError):
                pinger.ping()  # the sentinels still name the dead master
    kinds = {type(o).__name__ for o in answered + failed}
    assert not kinds & {"Redis", "ConnectionPool", "Connection", "Sentinel",
                        "SentinelConnectionPool", "ConnectionError"}, kinds
    new = cluster.wait_for_failover(old)

    def answers() -> bool:
        try:
            pinger.ping()
        except redis.ConnectionError:
            return False
        return True

    wait_for(answers, what="a PING of the new master")
    watcher = new.client()
    before = watcher.info("stats")["total_connections_received"]
    pinger.ping()
    assert watcher.info("stats")["total_connections_received"] - before >= 1
    pinger.close()
