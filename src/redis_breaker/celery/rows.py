"""Outbox rows: what a dispatch stores, and how a relay claims a batch of them.

A row holds kombu's JSON (datetimes, UUIDs, decimals and bytes round-trip;
nothing is ever pickled), the options that mean something in another process,
and absolute UTC times. Datetimes are written as the database columns hold
them (naive UTC when ``USE_TZ`` is off).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import TYPE_CHECKING, Any

from django.db import connections, router, transaction
from django.db.models import Q
from django.utils import timezone
from kombu.utils import json as kombu_json

from redis_breaker.conf import conf

if TYPE_CHECKING:
    from celery import Celery

    from redis_breaker.models import OutboxMessage

__all__ = [
    "OutboxSerializationError",
    "aware",
    "check_storable",
    "claim",
    "from_json",
    "stored_dispatch",
    "to_json",
    "write_dispatch",
    "write_message",
]

# Options that only mean something in the calling process; never stored.
_LOCAL_OPTIONS = frozenset({"producer", "connection", "publisher", "router", "result_cls",
                            "add_to_parent", "retry", "retry_policy", "serializer",
                            "compression"})


class OutboxSerializationError(TypeError):
    """Task arguments or options that the outbox cannot store as JSON."""


# ------------------------------------------------------------------ encoding
def to_json(value: Any, what: str, task_name: str) -> Any:
    """``value`` as plain JSON data (kombu's tags for datetime, UUID, Decimal, bytes).

    Raises ``OutboxSerializationError`` naming the task and ``what`` (its
    "arguments", "keyword arguments" or "options").
    """
    try:
        return json.loads(kombu_json.dumps(value))  # type: ignore[no-untyped-call]
    except (TypeError, ValueError) as exc:
        raise _unstorable(what, task_name, exc) from exc


def _unstorable(what: str, task_name: str, exc: Exception) -> OutboxSerializationError:
    return OutboxSerializationError(
        f"cannot dispatch {task_name}: its {what} are not JSON-serializable ({exc}). "
        "The outbox stores tasks as JSON so they survive a Redis outage; "
        "pass ids or plain data instead of objects."
    )


def from_json(value: Any) -> Any:
    """The value ``to_json`` stored, with kombu's types restored."""
    return kombu_json.loads(json.dumps(value))  # type: ignore[no-untyped-call]


def _utcnow() -> datetime:
    return datetime.now(dt_timezone.utc)


def _db_now() -> datetime:
    """Now, as the database columns hold it (naive UTC when ``USE_TZ`` is off)."""
    now = _utcnow()
    return now if conf.USE_TZ else now.replace(tzinfo=None)


def _db_datetime(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if timezone.is_naive(value):
        value = value.replace(tzinfo=dt_timezone.utc)
    if conf.USE_TZ:
        return value
    return value.astimezone(dt_timezone.utc).replace(tzinfo=None)


def aware(value: datetime | None) -> datetime | None:
    """A datetime read from the table, made aware (naive ones are UTC)."""
    if value is None or timezone.is_aware(value):
        return value
    return value.replace(tzinfo=dt_timezone.utc)


# ------------------------------------------------------------------ writing
def _stored(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in _LOCAL_OPTIONS and v is not None}


def check_storable(task_name: str, args: Any, kwargs: Any, options: Mapping[str, Any]) -> None:
    """Refuse a dispatch the outbox could not store; run at every dispatch, not only in an outage."""
    to_json(list(args or ()), "arguments", task_name)
    to_json(dict(kwargs or {}), "keyword arguments", task_name)
    to_json(_stored(options), "options", task_name)


def _absolute_times(app: Celery, options: dict[str, Any]) -> tuple[datetime | None,
                                                                   datetime | None]:
    """Pop ``countdown``/``eta``/``expires`` and return them as absolute UTC datetimes."""
    now = _utcnow()
    countdown = options.pop("countdown", None)
    eta = options.pop("eta", None)
    expires = options.pop("expires", None)
    if isinstance(eta, str):
        eta = datetime.fromisoformat(eta)
    if countdown is not None and eta is None:
        eta = now + timedelta(seconds=float(countdown))
    if isinstance(expires, (int, float)):
        expires = now + timedelta(seconds=float(expires))
    elif isinstance(expires, str):
        expires = datetime.fromisoformat(expires)
    tz = app.timezone
    if isinstance(eta, datetime) and eta.tzinfo is None:
        eta = eta.replace(tzinfo=tz)
    if isinstance(expires, datetime) and expires.tzinfo is None:
        expires = expires.replace(tzinfo=tz)
    return eta, expires


def stored_dispatch(app: Celery, options: Mapping[str, Any]
                    ) -> tuple[dict[str, Any], datetime | None, datetime | None]:
    """The options of a dispatch as a row stores them, and its absolute ``eta``/``expires``."""
    stored = _stored(options)
    eta, expires = _absolute_times(app, stored)
    return stored, eta, expires


def _json_text(value: Any, what: str, task_name: str) -> str:
    """``value`` as JSON text (kombu's tags), as the column holds it; as ``to_json`` refuses."""
    try:
        text: str = kombu_json.dumps(value)  # type: ignore[no-untyped-call]
    except (TypeError, ValueError) as exc:
        raise _unstorable(what, task_name, exc) from exc
    return text


def write_dispatch(app: Celery, *, breaker: str, task_name: str, args: Any, kwargs: Any,
                   task_id: str, options: Mapping[str, Any]) -> int:
    """Store one ``apply_async`` the broker could not take, its times made absolute.

    Returns the row's id. The hot path of an outbox dispatch: on PostgreSQL and SQLite
    the values go to the INSERT as the columns hold them, each JSON column's text
    encoded once, without a model instance (``write_message`` builds one, and its
    JSON is encoded, decoded and encoded again); other databases take ``write_message``.
    """
    from redis_breaker.models import OutboxMessage

    stored = _stored(options)
    eta, expires = _absolute_times(app, stored)
    db = router.db_for_write(OutboxMessage)
    connection = connections[db]
    if connection.vendor not in _DIRECT_VENDORS:
        row = write_message(breaker=breaker, task_id=task_id, task_name=task_name, args=args,
                            kwargs=kwargs, options=stored, eta=eta, expires=expires, using=db)
        return int(row.pk)
    alone = connection.vendor == "postgresql" and connection.get_autocommit()
    sql, names, defaults, returns = _direct_statement(connection, alone)
    adapt = connection.ops.adapt_datetimefield_value
    values = {
        "breaker": breaker,
        "task_id": task_id,
        "task_name": task_name,
        "args": _json_text(list(args or ()), "arguments", task_name),
        "kwargs": _json_text(dict(kwargs or {}), "keyword arguments", task_name),
        "options": _json_text(stored, "options", task_name),
        "eta": adapt(_db_datetime(eta)),
        "expires": adapt(_db_datetime(expires)),
        "created_at": adapt(_db_now()),
    }
    params = [values[name] if name in values else defaults[name] for name in names]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if returns:
            return int(cursor.fetchone()[0])
        return int(cursor.lastrowid)


def write_message(
    *,
    breaker: str,
    task_id: str,
    task_name: str,
    args: Any,
    kwargs: Any,
    options: Mapping[str, Any],
    eta: datetime | None,
    expires: datetime | None,
    using: str | None = None,
) -> OutboxMessage:
    """Insert one row in the current transaction of ``using`` (rolled back with it)."""
    from redis_breaker.models import OutboxMessage

    row = OutboxMessage(
        breaker=breaker,
        task_id=task_id,
        task_name=task_name,
        args=to_json(list(args or ()), "arguments", task_name),
        kwargs=to_json(dict(kwargs or {}), "keyword arguments", task_name),
        options=to_json(dict(options), "options", task_name),
        eta=_db_datetime(eta),
        expires=_db_datetime(expires),
        created_at=_db_now(),
    )
    _insert(row, using or router.db_for_write(OutboxMessage))
    return row


# The INSERT of a row, per database alias, vendor and whether it is PostgreSQL's
# statement of its own (below): (sql, fields, returns the id).
_INSERTS: dict[tuple[str, str, bool], tuple[str, list[Any], bool]] = {}


def _insert_statement(connection: Any, alone: bool) -> tuple[str, list[Any], bool]:
    from redis_breaker.models import OutboxMessage

    key = (connection.alias, connection.vendor, alone)
    found = _INSERTS.get(key)
    if found is None:
        meta = OutboxMessage._meta
        fields = [f for f in meta.concrete_fields if not f.primary_key]
        qn = connection.ops.quote_name
        placeholders = ", ".join(["%s"] * len(fields))
        sql = f"INSERT INTO {qn(meta.db_table)} ({', '.join(qn(f.column) for f in fields)}) "
        if alone:
            sql += (f"SELECT {placeholders} "
                    "WHERE set_config('synchronous_commit', 'off', true) = 'off'")
        else:
            sql += f"VALUES ({placeholders})"
        returns = bool(connection.features.can_return_columns_from_insert)
        if returns:
            returning = _returning_sql(connection, meta.pk)
            sql += " " + returning
        found = _INSERTS[key] = (sql, fields, returns)
    return found


def _returning_sql(connection: Any, pk: Any) -> str:
    """``RETURNING <pk>`` as the backend writes it (Django 6.0 renamed the operation)."""
    ops = connection.ops
    method = getattr(ops, "returning_columns", None) or ops.return_insert_columns
    sql: str = method([pk])[0]
    return sql


_DIRECT_VENDORS = ("postgresql", "sqlite")
#: ``write_dispatch``'s INSERT per database alias, vendor and whether it is PostgreSQL's
#: statement of its own: (sql, column attnames in order, prepared defaults, returns the id).
_DIRECT: dict[tuple[str, str, bool], tuple[str, list[str], dict[str, Any], bool]] = {}
_GIVEN = frozenset({"breaker", "task_id", "task_name", "args", "kwargs", "options", "eta",
                    "expires", "created_at"})


def _direct_statement(connection: Any, alone: bool
                      ) -> tuple[str, list[str], dict[str, Any], bool]:
    """``write_dispatch``'s INSERT (as ``_insert_statement``'s), its JSON columns taking JSON
    text: ``%s::jsonb`` on PostgreSQL, text columns on SQLite."""
    from django.db.models import JSONField

    from redis_breaker.models import OutboxMessage

    key = (connection.alias, connection.vendor, alone)
    found = _DIRECT.get(key)
    if found is None:
        meta = OutboxMessage._meta
        fields = [f for f in meta.concrete_fields if not f.primary_key]
        qn = connection.ops.quote_name
        postgres = connection.vendor == "postgresql"
        marks = ", ".join("%s::jsonb" if postgres and isinstance(f, JSONField) else "%s"
                          for f in fields)
        sql = f"INSERT INTO {qn(meta.db_table)} ({', '.join(qn(f.column) for f in fields)}) "
        if alone:
            sql += f"SELECT {marks} WHERE set_config('synchronous_commit', 'off', true) = 'off'"
        else:
            sql += f"VALUES ({marks})"
        returns = bool(connection.features.can_return_columns_from_insert)
        if returns:
            returning = _returning_sql(connection, meta.pk)
            sql += " " + returning
        defaults = {f.attname: f.get_db_prep_save(f.get_default(), connection)
                    for f in fields if f.attname not in _GIVEN}
        found = _DIRECT[key] = (sql, [f.attname for f in fields], defaults, returns)
    return found


def _insert(row: OutboxMessage, db: str) -> None:
    """INSERT ``row`` into ``db`` with a statement built once per database.

    ``Model.save()`` compiles the INSERT for every row, about two thirds of
    the cost of an outbox dispatch on SQLite. The values are prepared by the
    model's own fields, as ``save()`` prepares them; no signal is sent.

    On PostgreSQL outside the caller's transaction the statement is a
    transaction of its own, and it commits without waiting for the WAL to
    reach the disk: ``set_config('synchronous_commit', 'off', true)`` in the
    INSERT itself holds for that transaction only (one round trip; as
    SQLite's ``synchronous=NORMAL``, docs/celery.md). A crash of the server can
    lose the last ~0.6 s of such rows; it cannot corrupt them. A row written
    in the caller's transaction is committed however the caller's is.
    """
    connection = connections[db]
    alone = connection.vendor == "postgresql" and connection.get_autocommit()
    sql, fields, returns = _insert_statement(connection, alone)
    params = [f.get_db_prep_save(getattr(row, f.attname), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if returns:
            row.pk = cursor.fetchone()[0]
        else:
            row.pk = connection.ops.last_insert_id(cursor, row._meta.db_table,
                                                   str(row._meta.pk.column))
    row._state.adding = False
    row._state.db = db


# ------------------------------------------------------------------ claiming
def claim(breaker: str, batch: int, using: str, lease: float) -> tuple[str, list[OutboxMessage]]:
    """Claim up to ``batch`` pending rows of ``breaker`` in id order for ``lease`` seconds.

    Returns the claim's token (``claimed_by``) and the rows.
    """
    from redis_breaker.models import OutboxMessage

    token = uuid.uuid4().hex
    now = _db_now()
    free = Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    pending = OutboxMessage.objects.using(using).filter(breaker=breaker,
                                                        status=OutboxMessage.PENDING)
    claim = {"claimed_by": token, "claimed_until": now + timedelta(seconds=lease)}
    if connections[using].features.has_select_for_update_skip_locked:
        with transaction.atomic(using=using):
            ids = list(pending.filter(free).select_for_update(skip_locked=True)
                       .order_by("id").values_list("id", flat=True)[:batch])
            if ids:
                pending.filter(free, id__in=ids).update(**claim)
    else:
        # One UPDATE statement: SQLite takes its write lock up front (no
        # read-to-write upgrade that fails with "database is locked"), and the
        # condition on the claim keeps a row from being claimed twice.
        candidates = pending.filter(free).order_by("id").values("id")[:batch]
        pending.filter(free, id__in=candidates).update(**claim)
    rows = list(OutboxMessage.objects.using(using).filter(claimed_by=token).order_by("id"))
    return token, rows
