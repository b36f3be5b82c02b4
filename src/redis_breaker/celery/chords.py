"""A ``chord`` whose header cannot be published: stored in the outbox as one unit, relayed whole.

A chord on a Redis result backend needs one write to that backend when it is
dispatched: its size (``set_chord_size``, the ``.s`` key beside the counter of
finished header tasks; Celery 5.3 to 5.7 write it just before publishing the
header's last member). The worker that finishes the last header task reads it
to start the body (``on_chord_part_return``); without it the body never runs.

With that backend on the broker's Redis (``results`` guards it), Celery's chord
setup (``apply_chord``, called once the chord's ids are frozen, before any
header member is dispatched) starts a :class:`ChordUnit` for the header: the
chord's group id, the ids of its header results, the body. Every header member
dispatched after it is one of those ids (a plain task, or the first task of a
chain whose last task is). A member that is published is published; a member
that would go to the outbox (the breaker open, or its publish failed on a
connection error) goes into the unit instead of a row of its own, and the
chord's size is kept in the unit when the breaker is open or a member is
already in it (or its write fails). When the last member has been dispatched,
the unit is written as **one** outbox row (task name ``celery.chord``, task id
the body's), in the caller's transaction: the whole chord or nothing of it.

The relay (``relay_chord``) writes the size to the result backend first, then
publishes the stored members in order with their ids, group id, group index
and the chord's body attached, as Celery would have; the worker that finishes
the last of them starts the body once. A relay that fails half way leaves the
row pending and is made again whole: the size is written again (the same
value), and a member published twice runs once (``once``: the workers' claim;
a copy skipped there does not count as a finished header task).

Refused (``CanvasRefused``, nothing of the chord stored) while the breaker is
open: a header Celery gives as a generator, or one holding a group or a chord
(in a chain, or nested): for those Celery's ``apply_chord`` itself stores the
header's structure on the backend.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery.result import AsyncResult, GroupResult

from redis_breaker._events import emit

from .rows import stored_dispatch, to_json, write_dispatch

if TYPE_CHECKING:
    from celery import Celery

    from redis_breaker._breaker import Breaker

__all__ = ["CHORD_KEY", "CHORD_TASK", "ChordUnit", "begin", "current", "relay_chord"]

#: The outbox row of a chord unit: its task name (Celery's builtin, registered in every app)
#: and the key of its options that holds the unit.
CHORD_TASK = "celery.chord"
CHORD_KEY = "redis_breaker_chord"

_current: ContextVar[ChordUnit | None] = ContextVar("redis_breaker_chord_unit", default=None)


def current() -> ChordUnit | None:
    """The chord whose header this context is dispatching, if any."""
    return _current.get()


def _simple(result: Any) -> bool:
    """Whether ``result`` is a task's, with only tasks' results before it (a chain of tasks)."""
    seen = 0
    node = result
    while node is not None:
        if isinstance(node, GroupResult) or not isinstance(node, AsyncResult):
            return False
        seen += 1
        if seen > 10_000:  # a cycle: not a shape we store
            return False
        node = node.parent
    return True


def _body_id(body: Any, group_id: str) -> str:
    """The id of the chord's result (its body's; a chain body's last task's)."""
    options = getattr(body, "options", None) or {}
    found = options.get("task_id")
    tasks = getattr(body, "tasks", None)
    if not found and tasks:
        found = (getattr(tasks[-1], "options", None) or {}).get("task_id")
    return str(found or group_id)


@dataclass
class ChordUnit:
    """The header of one chord being dispatched: what went to the outbox of it, and its size."""

    app: Celery
    breaker: Breaker
    group_id: str
    body: Any
    header: list[str]
    remaining: set[str]
    size: int | None = None
    size_written: bool = False
    members: list[dict[str, Any]] = field(default_factory=list)

    def member_of(self, task_id: str, options: Mapping[str, Any]) -> str | None:
        """The header result this dispatch stands for (itself, or the last task of the chain
        it starts), or ``None``: not a member of this chord."""
        if task_id in self.remaining:
            return task_id
        for step in options.get("chain") or ():
            step_id = ((step.get("options") if isinstance(step, Mapping) else None)
                       or {}).get("task_id")
            if step_id in self.remaining:
                return str(step_id)
        return None

    @property
    def keeping(self) -> bool:
        """Whether something of the chord is kept here already (a member, or its size not
        written): every later member is kept too, so that the relay writes the size
        before any of them is published."""
        return bool(self.members) or (self.size is not None and not self.size_written)

    def add(self, name: str, args: Any, kwargs: Any, task_id: str,
            options: Mapping[str, Any]) -> None:
        """Keep one header member that could not be published (its row, inside the unit)."""
        stored, eta, expires = stored_dispatch(self.app, options)
        self.members.append({
            "name": name,
            "args": to_json(list(args or ()), "arguments", name),
            "kwargs": to_json(dict(kwargs or {}), "keyword arguments", name),
            "task_id": task_id,
            "options": to_json(stored, "options", name),
            "eta": to_json(eta, "options", name),
            "expires": to_json(expires, "options", name),
        })

    def dispatched(self, member: str) -> None:
        """One header member dispatched (published or kept); the last one ends the unit."""
        self.remaining.discard(member)
        if not self.remaining:
            self.finish()

    def finish(self) -> None:
        """The whole header dispatched: write the unit (one row) when anything of it is kept."""
        end(self)
        if not self.members and self.size_written:
            return
        unit = {
            "group_id": self.group_id,
            "size": self.size if self.size is not None else len(self.header),
            "header": list(self.header),
            "members": self.members,
        }
        write_dispatch(self.app, breaker=self.breaker.name, task_name=CHORD_TASK, args=[],
                       kwargs={}, task_id=_body_id(self.body, self.group_id),
                       options={CHORD_KEY: unit})
        for stored in STORED:
            stored(self.breaker, self.app)
        emit(logging.INFO, "outbox_chord_stored", breaker=self.breaker.name,
             group_id=self.group_id, members=len(self.members), size=unit["size"])


#: Called with (breaker, app) after a unit is written: the outbox registers its relay
#: there (``outbox.relay_for``; it imports this module, so this one does not import it).
STORED: list[Callable[[Breaker, Celery], object]] = []


def begin(app: Celery, breaker: Breaker, header_result_args: Any, body: Any) -> ChordUnit | None:
    """Start the unit of a chord whose header Celery is about to dispatch.

    ``None`` for a header this module does not store (a generator, groups or chords in
    it): the caller refuses it while the breaker is open, leaves it to Celery otherwise.
    """
    stale = _current.get()
    if stale is not None:
        abandon(stale, "another chord was dispatched")
    try:
        group_id, results = header_result_args[0], header_result_args[1]
    except (TypeError, IndexError, KeyError):
        return None
    if not isinstance(results, (list, tuple)) or not all(_simple(r) for r in results):
        return None
    header = [str(r.id) for r in results]
    if len(set(header)) != len(header):
        return None
    unit = ChordUnit(app, breaker, str(group_id), body, header, set(header))
    _current.set(unit)
    return unit


def end(unit: ChordUnit) -> None:
    if _current.get() is unit:
        _current.set(None)


def abandon(unit: ChordUnit, why: str) -> None:
    """Drop a unit whose dispatch did not end (its chord raised before its last member)."""
    end(unit)
    if unit.members:
        emit(logging.WARNING, "outbox_chord_abandoned", breaker=unit.breaker.name,
             group_id=unit.group_id, members=len(unit.members), reason=why)


def through_unit(task_id: str, options: Mapping[str, Any],
                 send: Callable[[ChordUnit | None], AsyncResult]) -> AsyncResult:
    """Dispatch one task with ``send(unit)``: the unit of the chord it belongs to, if any.

    A dispatch that is not a member of the chord being dispatched in this context
    means that chord's dispatch ended early (it raised): its unit is dropped.
    """
    unit = _current.get()
    if unit is None:
        return send(None)
    member = unit.member_of(task_id, options)
    if member is None:
        abandon(unit, "its dispatch ended before its last header member")
        return send(None)
    try:
        result = send(unit)
    except BaseException as exc:
        abandon(unit, f"a header member raised {type(exc).__name__}")
        raise
    unit.dispatched(member)
    return result


def relay_chord(app: Celery, unit: Mapping[str, Any], publish: Callable[..., Any]) -> None:
    """Relay one stored chord (its row's options decoded): its size to the result backend,
    then its kept members in order (``publish(name, args, kwargs, task_id=, eta=, expires=,
    options=)``). Expired members are published too: the worker revokes them and the
    chord fails as Celery fails it, instead of waiting for them forever."""
    app.backend.set_chord_size(unit["group_id"], int(unit["size"]))
    for member in unit["members"]:
        publish(member["name"], member["args"], member["kwargs"], task_id=member["task_id"],
                eta=member["eta"], expires=member["expires"], options=member["options"])
