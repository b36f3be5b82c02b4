"""Database backends: ``redis_breaker.backends.sqlite3`` (see ``docs/celery.md``)."""
