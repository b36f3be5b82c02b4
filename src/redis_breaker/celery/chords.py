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
dispatched after it stands for one of those ids: a plain task, the first task of
a chain of tasks whose last task is the header result, or the first task of a
chain whose last step is a group (the header result is that group's; the worker
that ends the chain publishes the group). A member that is published is
published; a member that would go to the outbox (the breaker open, or its
publish failed on a connection error) goes into the unit instead of a row of its
own, and the chord's size is kept in the unit when the breaker is open or a
member is already in it (or its write fails). When the last member has been
dispatched, the unit is written as **one** outbox row (task name
``celery.chord``, task id the body's), in the caller's transaction: the whole
chord or nothing of it.

A header result that is a group's (a chain ending in a group) makes Celery's
Redis ``apply_chord`` write one more key at the chord's setup: the header's
structure (``GroupResult.as_tuple()`` under the group's key), which the worker
that finishes the header reads to give the body nested results. The unit holds
that structure; while the breaker is open (or when that write fails on a
connection error the breaker counts) it is kept in the unit, and so is every
member after it.

A chord in the header (nested) is dispatched by Celery as a chord of its own
while the header is: its setup, its header, its size. Its unit starts inside
the unit of the chord holding it (the header result it stands for is its body's)
and, when its last member has been dispatched, goes into that unit in its place
if anything of it was kept: one row still holds the whole canvas.

The relay (``relay_chord``) writes the header's structure (when there is one)
and the size to the result backend first, then publishes the stored members in
order with their ids, group id, group index and the chord's body attached, as
Celery would have, a nested chord's unit relayed the same way in its place; the
worker that finishes the last of them starts the body once. A relay that fails
half way leaves the row pending and is made again whole: the structure and the
size are written again (the same values), and a member published twice runs
once (``once``: the workers' claim; a copy skipped there does not count as a
finished header task).

A chain ending in a chord in the header is dispatched as its first task, the
chord riding in its message (the worker that ends the chain dispatches that
chord, with the Redis of then): that first task stands for the header result,
which is the chord's (its body's). Nothing of the inner chord is written at
dispatch, so nothing of it is kept but that message.

A header given as a generator reaches the setup as Celery's lazy ``regen`` (a
list that freezes its members as it is read): the unit reads it whole there, to
know every member and which one is last. The generator is consumed at the
setup rather than as the header is published, the chord healthy or not.

Refused (``CanvasRefused``, nothing of the chord stored) while the breaker is
open: any other header result than those above (a chain holding two groups in a
row, say); and a chord whose member asks to raise (``breaker_fallback="raise"``)
once something of the chord is kept (before that, the member raises the
breaker's error itself). A member whose fallback is ``sync`` is kept in the
unit like the others: run in the caller, it could not count towards its chord,
whose counter is on the Redis that is away.
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
    return _chain_top(result) is None and isinstance(result, AsyncResult) and not isinstance(
        result, GroupResult)


#: What ``_chain_top`` returns for a result whose chain of parents is not only tasks' results.
_NOT_TASKS = object()


def _chain_top(result: Any) -> Any:
    """Walk ``result``'s parents while they are tasks' results: ``None`` when the chain ends
    on one (every result in it a task's), the ``GroupResult`` it ends on, or ``_NOT_TASKS``
    (another kind of result, or a cycle)."""
    seen = 0
    node = result
    while node is not None:
        if isinstance(node, GroupResult):
            return node if node is not result else _NOT_TASKS
        if not isinstance(node, AsyncResult):
            return _NOT_TASKS
        seen += 1
        if seen > 10_000:  # a cycle: not a shape we store
            return _NOT_TASKS
        node = node.parent
    return None


def _entry_kind(result: Any) -> str | None:
    """The kind of one header result this module stores, or ``None``.

    ``task``: a task's, or a chain of tasks' (its first task is published with the rest of
    the chain attached). ``group``: a chain of tasks ending in a group (the chain's first
    task is published, the worker publishes the group later; Celery's ``apply_chord``
    stores the header's structure for it). ``chord``: a chord's (its body's, a task or a
    chain of tasks), nested in the header: its own setup and header are dispatched in
    its own unit, kept inside this one. ``chain to a chord``: a chain of tasks ending in
    a chord (the chain's first task is published with the chord in its message; the
    worker that ends the chain dispatches the chord, whose body's result this is).
    """
    if isinstance(result, GroupResult):
        parent = result.parent
        return "group" if parent is not None and _simple(parent) else None
    if not isinstance(result, AsyncResult):
        return None
    top = _chain_top(result)
    if top is None:
        return "task"
    if isinstance(top, GroupResult) and top.parent is None:
        return "chord"
    if isinstance(top, GroupResult) and _simple(top.parent):
        return "chain to a chord"
    return None


def _step_ids(step: Any) -> list[Any]:
    """The ids a step of a chain message stands for: its own; for a chord, its body's too
    (a chain ending in a chord: the chord's result is its body's)."""
    if not isinstance(step, Mapping):
        return []
    ids = [(step.get("options") or {}).get("task_id")]
    if step.get("task") == CHORD_TASK:
        body = (step.get("kwargs") or {}).get("body")
        while isinstance(body, Mapping):
            ids.append((body.get("options") or {}).get("task_id"))
            tasks = (body.get("kwargs") or {}).get("tasks") if body.get(
                "task") == "celery.chain" else None
            body = tasks[-1] if isinstance(tasks, list) and tasks else None
    return ids


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
    #: The header's structure (``GroupResult.as_tuple()``) when Celery's ``apply_chord``
    #: stores it on the backend (a header result is a group's), else ``None``; and
    #: whether that write was made at dispatch.
    saved: Any = None
    save_written: bool = False
    #: The unit of the chord whose header holds this chord (nested), and the header
    #: result this chord stands for there (its body's).
    parent: ChordUnit | None = None
    parent_member: str | None = None

    def member_of(self, task_id: str, options: Mapping[str, Any]) -> str | None:
        """The header result this dispatch stands for (itself, or the last task of the chain
        it starts), or ``None``: not a member of this chord."""
        if task_id in self.remaining:
            return task_id
        for step in options.get("chain") or ():
            for step_id in _step_ids(step):
                if step_id in self.remaining:
                    return str(step_id)
        return None

    @property
    def keeping(self) -> bool:
        """Whether something of the chord is kept here already (a member, its size or its
        header's structure not written, or something of the chord holding it): every
        later member is kept too, so that the relay writes them before any of them is
        published."""
        return (bool(self.members) or (self.size is not None and not self.size_written)
                or (self.saved is not None and not self.save_written)
                or (self.parent is not None and self.parent.keeping))

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

    def as_stored(self) -> dict[str, Any]:
        """The unit as its row keeps it (``relay_chord`` reads it)."""
        unit: dict[str, Any] = {
            "group_id": self.group_id,
            "size": self.size if self.size is not None else len(self.header),
            "header": list(self.header),
            "members": self.members,
        }
        if self.saved is not None:
            unit["saved"] = self.saved
        return unit

    def finish(self) -> None:
        """The whole header dispatched: write the unit (one row) when anything of it is kept;
        a nested chord's unit goes into the unit of the chord holding it instead."""
        end(self)
        kept = bool(self.members) or not self.size_written or (
            self.saved is not None and not self.save_written)
        if self.parent is not None:
            if kept:
                self.parent.members.append({CHORD_KEY: self.as_stored()})
            self.parent.dispatched(str(self.parent_member))
            return
        if not kept:
            return
        unit = self.as_stored()
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

    A chord that is a header member of the chord being dispatched (nested) gets a unit
    inside that chord's. ``None`` for a header this module does not store (see
    ``_entry_kind``): the caller refuses it while the breaker is open, leaves it to
    Celery otherwise. A lazy header (Celery's ``regen``, a list) is read whole here.
    """
    parent = _current.get()
    member = _body_id(body, "") if parent is not None else ""
    if parent is not None and member not in parent.remaining:
        abandon(parent, "another chord was dispatched")
        parent = None
    try:
        group_id, results = header_result_args[0], header_result_args[1]
    except (TypeError, IndexError, KeyError):
        results = None
    kinds = ([_entry_kind(r) for r in results] if isinstance(results, (list, tuple))
             else [None])
    header = [str(r.id) for r in results] if None not in kinds and results else []
    if None in kinds or len(set(header)) != len(header):
        if parent is not None:
            # Nothing of the chord holding this one can be stored either.
            abandon(parent, "a chord in its header cannot be stored")
        return None
    saved = None
    if "group" in kinds:
        # What Celery's apply_chord stores for such a header (5.3 to 5.7): the header's
        # GroupResult, so that the worker that finishes it gives the body nested results.
        # (GroupResult.as_tuple() of the header, made without a GroupResult: building one
        # subscribes to every result in it.)
        saved = [[str(group_id), None], [r.as_tuple() for r in results]]
    unit = ChordUnit(app, breaker, str(group_id), body, header, set(header), saved=saved,
                     parent=parent, parent_member=member if parent is not None else None)
    _current.set(unit)
    return unit


def end(unit: ChordUnit) -> None:
    """``unit``'s dispatch ended: the chord holding it (if any) is the one being dispatched."""
    if _current.get() is unit:
        _current.set(unit.parent)


def abandon(unit: ChordUnit, why: str) -> None:
    """Drop a unit whose dispatch did not end (its chord raised before its last member),
    with the units of the chords holding it: their dispatch ends with it."""
    node: ChordUnit | None = unit
    while node is not None:
        if _current.get() is node:
            _current.set(None)
        if node.members:
            emit(logging.WARNING, "outbox_chord_abandoned", breaker=node.breaker.name,
                 group_id=node.group_id, members=len(node.members), reason=why)
        node = node.parent


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


class _Structure:
    """A header's structure as ``save_group`` takes it (what it reads of a ``GroupResult``)."""

    def __init__(self, saved: Any) -> None:
        self.saved = saved

    def as_tuple(self) -> Any:
        return self.saved


def _save_header(backend: Any, group_id: str, saved: Any) -> None:
    """Write a header's structure where Celery's Redis ``apply_chord`` writes it: the
    group's key, ``{"result": GroupResult.as_tuple()}``, with the chord's expiry (Celery
    5.7: ``_set_chord_key``) or the result's (5.3: ``header_result.save()``, that is
    ``save_group``). Written from the stored tuple: rebuilding the ``GroupResult`` would
    subscribe to every result in it."""
    set_chord_key = getattr(backend, "_set_chord_key", None)
    if set_chord_key is not None:
        set_chord_key(backend.get_key_for_group(group_id), backend.encode({"result": saved}))
    else:
        backend.save_group(group_id, _Structure(saved))


def relay_chord(app: Celery, unit: Mapping[str, Any], publish: Callable[..., Any]) -> None:
    """Relay one stored chord (its row's options decoded): its header's structure (when
    Celery's ``apply_chord`` stores one) and its size to the result backend, then its kept
    members in order (``publish(name, args, kwargs, task_id=, eta=, expires=, options=)``),
    a nested chord's unit relayed the same way in its place. Expired members are published
    too: the worker revokes them and the chord fails as Celery fails it, instead of waiting
    for them forever."""
    backend = app.backend
    saved = unit.get("saved")
    if saved is not None:
        _save_header(backend, str(unit["group_id"]), saved)
    backend.set_chord_size(unit["group_id"], int(unit["size"]))
    for member in unit["members"]:
        nested = member.get(CHORD_KEY)
        if nested is not None:
            relay_chord(app, nested, publish)
            continue
        publish(member["name"], member["args"], member["kwargs"], task_id=member["task_id"],
                eta=member["eta"], expires=member["expires"], options=member["options"])
