"""Effectively-once: a task published twice (an ambiguous publish, then the outbox) runs once.

Dispatch reaches Redis through a TCP proxy that loses the reply to the LPUSH
which publishes the task: Redis has queued the message, the publish times out
(socket timeout), the task goes to the outbox as well, and the relay publishes
it again with the same id. A real worker, connected to Redis directly, receives
both copies.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from pathlib import Path

import pytest
from celery import Celery

from redis_breaker import get_breaker
from redis_breaker.celery import BreakerTask, claim_key
from redis_breaker.models import OutboxMessage
from redis_breaker.outbox import drain
from tests.harness import RedisServer

from .conftest import celery_worker, join_relays, queued, wait_for
from .workers import worker_state_dir

pytestmark = pytest.mark.django_db(transaction=True)

class ReplyLosingProxy:
    """A TCP proxy to Redis that, once armed, forwards an LPUSH but never its reply."""

    def __init__(self, port: int) -> None:
        self.upstream = ("127.0.0.1", port)
        self.armed = threading.Event()
        self.lost = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closing = False
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            hold = threading.Event()
            for args in ((client, server, hold, True), (server, client, hold, False)):
                thread = threading.Thread(target=self._pump, args=args, daemon=True)
                self._threads.append(thread)
                thread.start()

    def _pump(self, src: socket.socket, dst: socket.socket, hold: threading.Event,
              to_redis: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if to_redis and self.armed.is_set() and b"LPUSH" in data:
                    self.armed.clear()
                    hold.set()
                if not to_redis and hold.is_set():
                    self.lost.set()
                    continue  # Redis answered; the caller never hears it
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closing = True
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(10)
        for sock in self._sockets:
            sock.close()



def _ambiguous_dispatch(redis_server: RedisServer, recorder: RedisServer, once: bool,
                        tmp_path: Path) -> tuple[str, dict[str, int], Path]:
    """Dispatch one task whose publish times out after reaching Redis; relay it; count runs."""
    from tests.celery.app import app, record

    proxy = ReplyLosingProxy(redis_server.port)
    app.conf.broker_url = redis_server.url.replace(f":{redis_server.port}/", f":{proxy.port}/")
    for cached in ("_redis_breaker_producers", "_redis_breaker_once_client"):
        app.__dict__.pop(cached, None)
    runs = recorder.client()
    with celery_worker("tests.celery.app", RB_BROKER_URL=redis_server.url,
                       RB_RECORD_URL=recorder.url, RB_ONCE="1" if once else "0",
                       RB_STATE_DIR=worker_state_dir(tmp_path)) as log:
        try:
            canary = record.delay(-1).id
            wait_for(lambda: runs.hexists("runs", canary), timeout=60,
                     what=f"the worker to start (log: {log})")
            proxy.armed.set()
            task_id = record.delay(1).id
            # The publish timed out: counted, and the task is in the outbox...
            assert proxy.lost.is_set()
            assert OutboxMessage.objects.get().task_id == task_id
            assert get_breaker().stats().consecutive_failures == 1
            # ...and Redis had queued it: the first copy is delivered.
            wait_for(lambda: runs.hexists("runs", task_id), timeout=60,
                     what=f"the copy that reached Redis to run (log: {log})")
            assert drain(app=app)["published"] == 1
            # The second copy is taken off the queue and handled by the worker.
            wait_for(lambda: queued(redis_server) == [], timeout=60, what="the queue to empty")
            marker = record.delay(2).id
            wait_for(lambda: runs.hexists("runs", marker), timeout=60,
                     what="a task sent after the second copy to run")
            counts = {k.decode(): int(v) for k, v in runs.hgetall("runs").items()}
        finally:
            runs.close()
            proxy.close()
            join_relays()
            cached = app.__dict__.pop("_redis_breaker_producers", None)
            if cached is not None:
                cached[1].connections.force_close_all()
    return task_id, counts, log


def test_a_twice_published_task_runs_once(redis_server: RedisServer, recorder: RedisServer,
                                          tmp_path: Path) -> None:
    """The worker's claim on the task id skips the outbox's second copy: one run."""
    task_id, counts, log = _ambiguous_dispatch(redis_server, recorder, True, tmp_path)
    assert counts[task_id] == 1
    client = redis_server.client()
    try:
        assert client.exists(claim_key(task_id, 0))
        assert 0 < client.ttl(claim_key(task_id, 0)) <= 86400
    finally:
        client.close()
    assert re.search(rf"task_duplicate_skipped.*{task_id}", log.read_text())


def test_without_the_claim_the_task_runs_twice(redis_server: RedisServer,
                                               recorder: RedisServer, tmp_path: Path) -> None:
    """With CELERY_REDIS_BREAKER_ONCE off, the same ambiguous publish runs the task twice."""
    task_id, counts, _ = _ambiguous_dispatch(redis_server, recorder, False, tmp_path)
    assert counts[task_id] == 2


def test_retries_and_direct_calls_are_not_claimed(redis_server: RedisServer) -> None:
    """A direct call or an eager run claims nothing; a claim is per retry count, so
    self.retry() runs."""
    app = Celery("rb-once", broker=redis_server.url, task_cls=BreakerTask, set_as_current=False)

    @app.task(name="t.once", shared=False, bind=True)
    def once(self: BreakerTask) -> str:
        return "ran"

    try:
        assert once() == "ran"
        assert once.apply().get() == "ran"  # eager: the sync fallback's way of running
        client = redis_server.client()
        try:
            assert client.keys("redis_breaker:once:*") == []
        finally:
            client.close()
        assert claim_key("abc", 0) != claim_key("abc", 1)
    finally:
        app.close()
