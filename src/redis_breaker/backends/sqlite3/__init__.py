"""Django's SQLite backend with ``OPTIONS["transaction_mode"]`` and ``["init_command"]`` on every Django.

Django 5.1 added both options to its SQLite backend. The outbox relies on
them (``docs/celery.md``, "The outbox on SQLite"): on Django 4.2 and 5.0, set
``ENGINE = "redis_breaker.backends.sqlite3"`` to have the same two options with
the same meaning; on Django 5.1 and later this backend is Django's own.
"""
