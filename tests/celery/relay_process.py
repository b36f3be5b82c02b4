"""One outbox relay pass in a process of its own: ``python -m tests.celery.relay_process``.

Run by test_relay_processes.py, several at once on one outbox. Django is set up
as in the worker subprocess (``worker_settings``: ``RB_DATABASE``, ``RB_BROKER_URL``).
It prints "ready", waits for the file ``RB_START`` to exist (the test creates
it once every process is ready), then prints the pass's counts as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ["DJANGO_SETTINGS_MODULE"] = "tests.celery.worker_settings"


def main() -> None:
    import django

    django.setup()
    from redis_breaker.outbox import drain
    from tests.celery.django_worker import app

    start = os.environ["RB_START"]
    print("ready", flush=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(start):
        if time.monotonic() > deadline:
            sys.exit("the start file never appeared")
        time.sleep(0.005)
    result = drain(app=app, batch_size=int(os.environ.get("RB_BATCH", "10")))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
