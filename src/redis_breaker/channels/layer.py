"""A Channels layer that keeps WebSockets open and messages flowing while Redis is down.

```python
CHANNEL_LAYERS = {"default": {
    "BACKEND": "redis_breaker.channels.BreakerChannelLayer",
    "CONFIG": {"hosts": ["redis://127.0.0.1:6379/0"], "breaker": "default"},
}}
```

Closed, every operation goes to channels_redis through the breaker. Open (or
when a call fails on a connection error), ``send`` and ``group_send`` deliver
to the channels of this process, from a mirror of the group memberships made
here; nothing raises to the consumer. ``receive`` waits on Redis and on the
local queues at once and never raises because of Redis. When the probe finds
Redis again, the memberships of this process are re-applied, so delivery
across processes resumes without any client reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import logging
import os
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import redis.exceptions as rex
from channels.layers import BaseChannelLayer

from redis_breaker._background import BackgroundJob
from redis_breaker._breaker import TRIAL_WAIT_S, Breaker
from redis_breaker._errors import BreakerOpenError
from redis_breaker._events import emit
from redis_breaker._redact import describe_error, redact
from redis_breaker._registry import derived_breaker, get_breaker
from redis_breaker._state import State, StateChange

from . import metrics
from .local import GroupMirror, LocalQueues
from .loops import RECANCEL_S, LoopState, LoopStates, wait
from .outbox import Kept, PendingSends
from .remote import DUPLICATE, POP_WATCH, Abandoned, PopWatch, RedisLayer, probe_url

__all__ = ["BreakerChannelLayer", "Message"]

Message = dict[str, Any]
_INTEGRATION = "channels"
_PASSING = (State.CLOSED, State.DISABLED)
# While Redis is unusable, receive re-checks the breaker at least this often:
# a breaker without a probe only half-opens when some call asks.
_RECHECK_S = 1.0
# A Redis call failed and the breaker stayed closed: try again after
# TRIAL_WAIT_S, doubling up to this, or at once on a transition.
_RETRY_MAX_S = 0.25
# Forwarding kept messages meets a full channel or a failing Redis: try again
# after TRIAL_WAIT_S, doubling up to this.
_FORWARD_RETRY_MAX_S = 1.0


class BreakerChannelLayer(BaseChannelLayer):  # type: ignore[misc]
    """channels_redis behind a circuit breaker, with in-process delivery while it is open.

    Every channels_redis CONFIG key passes through; ``breaker`` names the
    shared breaker (or is a ``Breaker``).
    """

    extensions: ClassVar[list[str]] = ["groups", "flush"]

    if not hasattr(BaseChannelLayer, "require_valid_channel_name"):  # channels 4.0
        def require_valid_channel_name(self, name: str, receive: bool = False) -> bool:
            return bool(self.valid_channel_name(name, receive))

        def require_valid_group_name(self, name: str) -> bool:
            return bool(self.valid_group_name(name))

    def __init__(self, hosts: Any = None, *, breaker: str | Breaker = "default",
                 **config: Any) -> None:
        self.redis = RedisLayer(hosts=hosts, **config)
        super().__init__(expiry=self.redis.expiry, capacity=self.redis.capacity)
        # Already compiled by channels_redis; get_capacity reads this form.
        self.channel_capacity = self.redis.channel_capacity
        self.group_expiry = self.redis.group_expiry
        self.breaker = breaker if isinstance(breaker, Breaker) else get_breaker(breaker)
        self.breaker.adopt_url(probe_url(self.redis.hosts))
        #: One breaker per host (shard): ``breaker`` for the first, one of its own
        #: (same settings, that host's URL) for each other.
        self.breakers = [self.breaker] + [shard_breaker(self.breaker, i, self.redis.hosts[i])
                                          for i in range(1, self.redis.ring_size)]
        self._sharded = len(self.breakers) > 1
        self._next_shard = 0
        self.mirror = GroupMirror(self.group_expiry)
        self.local = LocalQueues(self.expiry, self.get_capacity, self.mirror.drop_channel)
        #: Group messages for members in other processes that Redis did not take.
        self.dropped = 0
        #: Messages for channels this process does not own, kept while Redis is unusable.
        self.pending = PendingSends(self.expiry, self.get_capacity, self._expired)
        #: Kept messages dropped unsent after ``expiry`` seconds, and kept messages forwarded.
        self.expired = 0
        self.forwarded = 0
        #: Second copies of received messages, dropped.
        self.duplicates = 0
        self._forwarder = BackgroundJob("redis-breaker-channels-forward", self._forward_in_thread)
        metrics.register_default()
        self._ours = self.redis.client_prefix + "!"
        self._loops = LoopStates()
        self._resync_wanted = False
        self._closed = False
        self._listener = _weak_listener(self)
        for shard in self.breakers:
            shard.add_listener(self._listener)
        # A command that went through only on a new connection: Redis may have
        # restarted empty with no error and no transition to tell.
        self.redis.on_reconnect = _weak_reconnect(self)
        _LAYERS.add(self)

    def _forked(self) -> None:
        """In a forked child: the layer of a process of its own.

        The Redis side gets a client prefix of its own (``RedisLayer.forked``);
        the group memberships, local queues and per-loop state made by the
        parent's consumers are the parent's, not re-applied or served here.
        """
        self.redis.forked()
        self.mirror = GroupMirror(self.group_expiry)
        self.local = LocalQueues(self.expiry, self.get_capacity, self.mirror.drop_channel)
        self.pending = PendingSends(self.expiry, self.get_capacity, self._expired)
        self._ours = self.redis.client_prefix + "!"
        self._loops = LoopStates()
        self._resync_wanted = False

    def __getattr__(self, name: str) -> Any:
        """Every other attribute of channels_redis's layer (``client_prefix``,
        ``receive_buffer``, ``serialize``, ``_group_key``...) is its Redis side's."""
        if name == "redis" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.redis, name)

    async def close_pools(self) -> None:
        """Stop this loop's receives and resync and close its Redis pools (the layer stays usable)."""
        state = self._loops.get(asyncio.get_running_loop())
        if state is not None:
            await self._give_back(state)
            await state.stop()
        await self.redis.close_pools()

    def __str__(self) -> str:
        # channels_redis's own str() lists its hosts with their passwords
        return redact(f"{type(self).__name__}(breaker={self.breaker.name!r}, redis={self.redis})")

    # ------------------------------------------------------------------ sending
    async def send(self, channel: str, message: Message) -> None:
        """Send to a channel: through Redis, or in-process while Redis is unusable."""
        assert isinstance(message, dict), "message is not a dict"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        assert "__asgi_channel__" not in message
        self._loop_state()
        index = self._send_shard(channel) if self._sharded else 0
        args = (channel, message, self.redis.payload(channel, message), time.time(), index)
        if self.pending and channel in self.pending:
            # Kept messages of this channel go first: queue behind them.
            self._keep(*args)
            self._forward_soon()
            return
        await self.breakers[index].acall_with_fallback(
            self.redis.send_payload, self._send_locally, args, integration=_INTEGRATION
        )

    def _send_shard(self, channel: str) -> int:
        """The host a send goes to: the channel's own, or for a general channel the
        next host whose breaker is not open (a worker may pop it from any)."""
        if "!" in channel:
            return int(self.redis.consistent_hash(self.redis.non_local_name(channel)))
        return self._live_shard()

    def _live_shard(self) -> int:
        """The next host in turn whose breaker is not open (the next in turn if all are)."""
        count = len(self.breakers)
        start = self._next_shard
        self._next_shard = (start + 1) % count
        for step in range(count):
            index = (start + step) % count
            if not self.breakers[index].is_open:
                self._next_shard = (index + 1) % count
                return index
        return start

    def _shard_breaker(self, channel: str) -> Breaker:
        """The breaker of a specific channel's host (the first's for a general channel)."""
        if self._sharded and "!" in channel:
            return self.breakers[int(self.redis.consistent_hash(
                self.redis.non_local_name(channel)))]
        return self.breaker

    def _group_breaker(self, group: str) -> Breaker:
        if self._sharded:
            return self.breakers[int(self.redis.consistent_hash(group))]
        return self.breaker

    def _send_locally(self, channel: str, message: Message, payload: bytes, score: float,
                      index: int = 0) -> None:
        if self._ours in channel:
            self.local.put(channel, copy.deepcopy(message))
            # Should the failed send reach Redis after all, its copy is dropped on receipt.
            key = self.redis.message_id(payload)
            if key is not None:
                self.redis.seen.add(key)
        else:
            self._keep(channel, message, payload, score)
        self._redis_behind(self.breakers[index])

    def _keep(self, channel: str, message: Message, payload: bytes, score: float,
              index: int = 0) -> None:
        """Keep a message for a channel of another process (or any process) until Redis is back."""
        self.pending.put(channel, payload, score, copy.deepcopy(message))
        metrics.count(self.breaker.name, "kept")

    def _expired(self, channel: str, count: int) -> None:
        self.expired += count
        metrics.count(self.breaker.name, "expired", count)
        emit(logging.WARNING, "channels_messages_expired", breaker=self.breaker.name,
             channel=channel, messages=count, expiry=self.expiry)

    async def group_send(self, group: str, message: Message) -> None:
        """Send to every member of a group; while open, to the members in this process."""
        await self.send_to_group(group, message)

    async def send_to_group(self, group: str, message: Message) -> bool:
        """``group_send`` that tells whether Redis took the message (False: this process only)."""
        assert isinstance(message, dict), "Message is not a dict"
        assert self.require_valid_group_name(group), "Group name not valid"
        self._loop_state()
        sent: list[bytes] = []
        return await self._group_breaker(group).acall_with_fallback(
            self._group_send_redis, self._group_send_locally, (group, message, sent),
            integration=_INTEGRATION,
        )

    async def _group_send_redis(self, group: str, message: Message, sent: list[bytes]) -> bool:
        if not self._sharded:
            await self.redis.group_send(group, message, sent)
            return True
        home = self.redis.consistent_hash(group)
        delivered = True
        for index, names, write in await self.redis.group_send_shards(group, message, sent):
            if index == home:
                await write()  # a failure here is the group's host's, as for the members read
            else:
                delivered &= await self.breakers[index].acall_with_fallback(
                    _run, self._group_shard_locally, (write, names, message, sent, index),
                    integration=_INTEGRATION)
        return delivered

    def _group_shard_locally(self, write: object, names: list[str], message: Message,
                             sent: list[bytes], index: int) -> bool:
        """The members on a host that is down: those of this process get it here."""
        self._seen_all(sent)
        for channel in names:
            if self._ours in channel:
                self.local.put(channel, copy.deepcopy(message), drop_if_full=True)
            else:
                self.dropped += 1
        self._redis_behind(self.breakers[index])
        return False

    def _group_send_locally(self, group: str, message: Message, sent: list[bytes]) -> bool:
        # A command that failed may still run (a frozen server runs what it had
        # read once it thaws): a copy reaching a member here is dropped on receipt.
        self._seen_all(sent)
        self._redis_behind(self._group_breaker(group))
        for channel in self.mirror.members(group):
            if self._ours in channel:
                # A full channel drops the message, as group_send does on Redis.
                self.local.put(channel, copy.deepcopy(message), drop_if_full=True)
            else:
                self.dropped += 1
        return False

    def _seen_all(self, payloads: list[bytes]) -> None:
        for payload in payloads:
            key = self.redis.message_id(payload)
            if key is not None:
                self.redis.seen.add(key)

    # ---------------------------------------------------------------- receiving
    async def new_channel(self, prefix: str = "specific") -> str:
        name: str = await self.redis.new_channel(prefix)
        return name

    async def receive(self, channel: str) -> Message:
        """The next message for ``channel``, from Redis or from this process; never a Redis error."""
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        state = self._loop_state(home=True)
        general = "!" not in channel
        while True:
            message = self.local.pop(channel)
            if message is not None:
                return message
            kept_here = general and channel in self.pending
            if kept_here and self._kept_served_here():
                kept = self.pending.take(channel)
                if kept is not None:
                    metrics.count(self.breaker.name, "received_here")
                    return kept.message
            task = state.pending.get(channel)
            if task is not None and task.done() and _ended_unwanted(task):
                del state.pending[channel]
                task = None
            if task is None:
                watch = state.watches[channel] = PopWatch()
                task = state.start(self._receive_from_redis(channel, state, watch))
                task.add_done_callback(functools.partial(_forget_abandoned, state, channel))
                state.pending[channel] = task
            else:
                watch = state.watches.get(channel) or PopWatch()
                watch.abandoned = False  # wanted again
            if task.done():
                del state.pending[channel]
                state.watches.pop(channel, None)
                return task.result()
            arrived = self.local.wait(channel)
            kept_arrived = self.pending.wait(channel) if general else None
            waits: tuple[asyncio.Future[Any], ...] = (task, arrived)
            if kept_arrived is not None:
                waits += (kept_arrived,)
            # Kept messages wait for the forwarder while Redis is usable: should it
            # stop being usable, they are this receive's (a transition wakes it).
            transition = asyncio.ensure_future(state.changed.wait()) if kept_here else None
            if transition is not None:
                waits += (transition,)
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                if general and not task.done() and watch.popping:
                    # Redis may be handing the pop a message right now (see PopWatch):
                    # let the pop end; a message it brings is the next receive's.
                    # Not for a specific channel: channels_redis pops those for the
                    # whole process under one lock, which a pop left running would
                    # hold from every other consumer's receive.
                    watch.abandoned = True
                    raise
                # The consumer is going away (or gave up waiting, as wait_for does):
                # stop reading its channel from Redis...
                if not task.done():
                    task.cancel()
                    await asyncio.wait((task,), timeout=RECANCEL_S)
                if not task.done():
                    # It took the cancellation for a read timeout (see cancel_and_wait)
                    # and pops on. Cancelling it again could cut a pop Redis answers:
                    # it ends after this pop instead, and brings its message, if any,
                    # to the channel's next receive.
                    watch.abandoned = True
                elif task.cancelled() or task.exception() is not None:
                    if state.pending.get(channel) is task:
                        del state.pending[channel]
                else:
                    # ...but a message it already took from Redis is in no queue any
                    # more: the channel's next receive returns it.
                    state.pending[channel] = task
                raise
            finally:
                self.local.forget_waiter(channel, arrived)
                if kept_arrived is not None:
                    self.pending.forget_waiter(channel, kept_arrived)
                if transition is not None:
                    transition.cancel()

    def _kept_served_here(self) -> bool:
        """Whether a receiver here takes the kept messages of a general channel.

        Only while no host can take them (every breaker open): otherwise the
        forwarder writes them to Redis in order, and a receiver here reading
        them from Redis gets them in that order, behind those written already.
        """
        return all(breaker.is_open for breaker in self.breakers)

    async def _receive_from_redis(self, channel: str, state: LoopState,
                                  watch: PopWatch) -> Message:
        POP_WATCH.set(watch)  # this task's own context
        delay = TRIAL_WAIT_S
        specific = "!" in channel
        while True:
            changed = state.changed
            if specific or not self._sharded:
                index = self.redis.consistent_hash(self.redis.non_local_name(channel)) \
                    if specific else 0
            else:
                index = self._live_shard()  # a general channel: pop from the hosts that answer
            breaker = self.breakers[index]
            if breaker.state not in _PASSING:
                # Open or half-open: leave the trial calls to the probe and the resync.
                await wait(changed, _RECHECK_S)
                continue
            if watch.abandoned:
                raise Abandoned
            try:
                message: Message = await self.redis.receive_at(channel, index)
                if DUPLICATE in message:
                    # A second copy of a message received before: dropped, counted.
                    self.duplicates += 1
                    metrics.count(self.breaker.name, "duplicate")
                    continue
                return message
            except Abandoned:
                raise
            except rex.TimeoutError as exc:
                # An idle blocking pop can outlast a short read timeout; only a
                # PING that fails too says Redis is unwell.
                if await self._redis_answers(index):
                    continue
                error: BaseException = exc
            except Exception as exc:
                if breaker.counts(exc):
                    self._record_failure(breaker, exc)
                elif not isinstance(exc, rex.RedisError):
                    raise  # a bug here or in the message, not Redis
                # Other Redis errors (an OOM refusing the backup write, say) are not
                # an outage, but closing the consumer's socket would not help either.
                error = exc
            breaker.note_fallback(_INTEGRATION, error)
            self._redis_behind(breaker)
            await wait(changed, delay)
            delay = min(delay * 2, _RETRY_MAX_S)

    async def _redis_answers(self, index: int) -> bool:
        try:
            await self.breakers[index].acall(self.redis.connection(index).ping)
        except asyncio.CancelledError:
            raise
        except Exception:
            return False  # a counted failure was recorded by acall
        return True

    @staticmethod
    def _record_failure(breaker: Breaker, exc: BaseException) -> None:
        """Count a failure that happened outside a breaker call (a receive)."""
        if breaker.state not in _PASSING:
            return

        def fail() -> None:
            raise exc

        # What comes back is the error just recorded, or a rejection.
        with contextlib.suppress(BaseException):
            breaker.call(fail)

    # ------------------------------------------------------------------- groups
    async def group_add(self, group: str, channel: str) -> None:
        """Join locally at once, and in Redis now or when it is back."""
        assert self.require_valid_group_name(group), "Group name not valid"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        self.mirror.add(group, channel)
        self._loop_state(home=True)
        await self._group_breaker(group).acall_with_fallback(
            self.redis.group_add, self._add_later, (group, channel), integration=_INTEGRATION
        )

    async def group_discard(self, group: str, channel: str) -> None:
        """Leave locally at once, and in Redis now or when it is back."""
        assert self.require_valid_group_name(group), "Group name not valid"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        self.mirror.discard(group, channel)
        self._loop_state(home=True)
        await self._group_breaker(group).acall_with_fallback(
            self.redis.group_discard, self._discard_later, (group, channel),
            integration=_INTEGRATION,
        )

    def _add_later(self, group: str, channel: str) -> None:
        self._redis_behind(self._group_breaker(group))

    def _discard_later(self, group: str, channel: str) -> None:
        self.mirror.unsent_discards.add((group, channel))
        self._redis_behind(self._group_breaker(group))

    def _redis_behind(self, breaker: Breaker | None = None) -> None:
        """Redis missed a call, and may come back empty: re-apply memberships once it answers.

        An open breaker restarts the resync when it half-opens; a failure that
        left it closed (below the threshold) starts it here, or no transition
        ever would.
        """
        self._resync_wanted = True
        if not (breaker or self.breaker).is_open:
            self._start_resync(self._loop_state())
            self._forward_soon()

    # --------------------------------------------------------------- extensions
    async def flush(self) -> None:
        """Delete every message and group, here and in Redis (raises if Redis is unusable)."""
        self.local.clear()
        self.pending.clear()
        self.mirror.clear()
        self.dropped = 0
        await self.breaker.acall(self.redis.flush)

    async def close(self) -> None:
        """Stop the work this layer runs on the current loop and close its Redis pools."""
        state = self._loops.get(asyncio.get_running_loop())
        if state is not None:
            await self._give_back(state)
        # Transitions already on their way to a loop must not start work after this.
        self._closed = True
        for shard in self.breakers:
            with contextlib.suppress(ValueError):
                shard.remove_listener(self._listener)
        state = self._loops.get(asyncio.get_running_loop())
        if state is not None:
            await state.stop()
        await self.redis.close_pools()

    async def _give_back(self, state: LoopState) -> None:
        """Send again the messages receives took from Redis for consumers that stopped waiting.

        A receive cancelled during its blocking pop keeps what the pop brought
        for the channel's next receive (see ``remote.PopWatch``); closing with
        no such receive would lose it, so it goes back to its channel (to Redis,
        or kept until Redis is back), for another consumer or this one later.
        """
        for channel, task in list(state.pending.items()):
            if not task.done() or _ended_unwanted(task) or task.exception() is not None:
                continue
            del state.pending[channel]
            state.watches.pop(channel, None)
            await self.send(channel, task.result())

    # ----------------------------------------------------------------- recovery
    def _loop_state(self, *, home: bool = False) -> LoopState:
        """State for the running loop; ``home``: consumers live here, run recovery here."""
        loop = asyncio.get_running_loop()
        if self._closed:
            # Used again after close(): follow the breaker again.
            self._closed = False
            for shard in self.breakers:
                shard.add_listener(self._listener)
        return self._loops.of(loop, home=home)

    def _on_change(self, change: StateChange) -> None:
        """Breaker listener: runs in whatever thread made the transition."""
        if change.to_state is not State.OPEN and self.pending:
            self._forward_soon()
        for loop, state, home in self._loops.live():
            with contextlib.suppress(RuntimeError):  # closed in the meantime
                loop.call_soon_threadsafe(self._changed_on_loop, state, change, home)

    def _changed_on_loop(self, state: LoopState, change: StateChange, home: bool) -> None:
        if self._closed:
            return
        state.wake()
        back = change.to_state is State.HALF_OPEN or (
            change.to_state in _PASSING and change.from_state not in _PASSING
        )
        if back and home:
            self._resync_wanted = True
            self._start_resync(state)

    def _start_resync(self, state: LoopState) -> None:
        if self._closed:
            return
        if state.resync is None or state.resync.done():
            state.resync = state.start(self._resync(state))

    async def _resync(self, state: LoopState) -> None:
        """Re-apply this process's memberships (and unsent discards) to Redis."""
        while self._resync_wanted:
            self._resync_wanted = False
            groups = self.mirror.snapshot()
            discards = sorted(self.mirror.unsent_discards)
            # A group whose host is down waits for that host's recovery; the others go on.
            behind = False
            for group, members in groups.items():
                if not await self._through_breaker(state, self._group_breaker(group),
                                                   self.redis.group_rejoin, group, members):
                    behind = True
            for group, channel in discards:
                if not await self._through_breaker(state, self._group_breaker(group),
                                                   self.redis.group_discard, group, channel):
                    behind = True
                    continue
                if group not in self.mirror.groups or channel not in self.mirror.groups[group]:
                    self.mirror.unsent_discards.discard((group, channel))
            if behind:
                self._resync_wanted = True  # that host's next half-open starts over
                return
            emit(logging.INFO, "channels_groups_resynced", breaker=self.breaker.name,
                 groups=len(groups), memberships=sum(len(m) for m in groups.values()),
                 discards=len(discards))

    async def _through_breaker(self, state: LoopState, breaker: Breaker,
                               fn: Callable[..., Awaitable[object]], *args: Any) -> bool:
        """Run one resync step as a (trial) call; False when the breaker opened again."""
        delay = TRIAL_WAIT_S
        while True:
            if breaker.is_open:
                return False
            changed = state.changed
            try:
                # Half-open, it waits while another trial holds the slot.
                await breaker.acall_as_trial(fn, *args)
                return True
            except BreakerOpenError:
                continue  # opened again (or closed just as the slot was refused): look again
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not breaker.counts(exc):
                    emit(logging.ERROR, "channels_resync_failed", breaker=breaker.name,
                         error=describe_error(exc), args=repr(args[:1]))
                    return True  # not an outage: skip this step, keep the rest
            await wait(changed, delay)
            delay = min(delay * 2, _RETRY_MAX_S)


    # ------------------------------------------------------------- forwarding
    def _forward_soon(self) -> None:
        """Forward the kept messages in the background (a thread: senders may be sync code)."""
        if self.pending and not self._closed:
            self._forwarder.kick()

    def _forward_in_thread(self) -> None:
        asyncio.run(self._forward_all())

    async def _forward_all(self) -> None:
        """Send every kept message to Redis, oldest first per channel, as trial calls.

        Stops when the breaker opens (its next half-open starts again); a full
        channel or a failing command is tried again shortly, until its
        messages expire.
        """
        forwarded = 0
        delay = TRIAL_WAIT_S
        try:
            while self.pending and not self._closed:
                blocked = waiting = False
                for channel in self.pending.channels():
                    while True:
                        index = self._send_shard(channel) if self._sharded else 0
                        if self.breakers[index].is_open:
                            waiting = True  # that host's recovery kicks this again
                            break
                        # Lent, not taken: a send made while it is written queues behind it.
                        kept = self.pending.lend(channel)
                        if kept is None:
                            break
                        if not await self._forward_one(channel, kept, index):
                            blocked = True
                            break
                        forwarded += 1
                if blocked:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _FORWARD_RETRY_MAX_S)
                elif waiting:
                    return
        finally:
            if forwarded:
                self.forwarded += forwarded
                metrics.count(self.breaker.name, "forwarded", forwarded)
                emit(logging.INFO, "channels_messages_forwarded", breaker=self.breaker.name,
                     messages=forwarded, left=len(self.pending))

    async def _forward_one(self, channel: str, kept: Kept, index: int = 0) -> bool:
        """Write one kept message; False (and kept again) when it could not be written now."""
        breaker = self.breakers[index]
        try:
            written = await breaker.acall_as_trial(self.redis.forward, channel,
                                                   kept.payload, kept.score, index)
        except BaseException as exc:
            self.pending.put_back(channel, kept)
            if isinstance(exc, Exception) and not isinstance(exc, BreakerOpenError) \
                    and not breaker.counts(exc):
                emit(logging.ERROR, "channels_forward_failed", breaker=breaker.name,
                     channel=channel, error=describe_error(exc))
            if isinstance(exc, Exception):
                return False
            raise
        if written:
            self.pending.settle(channel)
        else:  # full: its reader is behind; try again until the message expires
            self.pending.put_back(channel, kept)
        return bool(written)


def _forget_abandoned(state: LoopState, channel: str, task: asyncio.Task[Message]) -> None:
    """A receive that ended with nothing (an abandoned empty pop) is no longer the channel's."""
    if _ended_unwanted(task) and state.pending.get(channel) is task:
        del state.pending[channel]
        state.watches.pop(channel, None)


def _ended_unwanted(task: asyncio.Task[Message]) -> bool:
    """A finished receive task that brought nothing: cancelled, or ended abandoned."""
    return task.cancelled() or isinstance(task.exception(), Abandoned)


async def _run(write: Callable[[], Awaitable[None]], *_: Any) -> bool:
    """Run one host's part of a group_send (the other arguments are its fallback's)."""
    await write()
    return True


def shard_breaker(first: Breaker, index: int, host: dict[str, Any]) -> Breaker:
    """The breaker of host ``index`` of a sharded layer whose first host's is ``first``.

    ``<first>-shard<index>`` in the registry (so the status, health checks and
    metrics list it), shared by the layers of one configuration: ``first``'s
    settings, this host's URL for the probe (and for the host-wide state file's name).
    """
    return derived_breaker(first, f"shard{index}", probe_url([host]))


def _weak_listener(layer: BreakerChannelLayer) -> Callable[[StateChange], None]:
    """A listener that does not keep the layer alive (the breaker lives for the process)."""
    ref = weakref.ref(layer)
    breaker = layer.breaker

    def listener(change: StateChange) -> None:
        target = ref()
        if target is None:
            breaker.remove_listener(listener)
            return
        target._on_change(change)

    return listener


def _weak_reconnect(layer: BreakerChannelLayer) -> Callable[[], None]:
    """``layer._redis_behind`` without keeping the layer alive from its own RedisLayer."""
    ref = weakref.ref(layer)

    def reconnected() -> None:
        target = ref()
        if target is not None and not target._closed:
            target._redis_behind()

    return reconnected


#: Every layer of the process, to be made the child's own after fork.
_LAYERS: weakref.WeakSet[BreakerChannelLayer] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for layer in list(_LAYERS):
        layer._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
