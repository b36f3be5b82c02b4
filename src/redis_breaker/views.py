"""``status``: JSON for load balancers and dashboards; 503 while any breaker is open.

Everyone sees each breaker's state (the host's, whichever process answers).
Staff users, or a request carrying the token from ``REDIS_BREAKER_STATUS_TOKEN``
(``Authorization: Bearer <token>`` or ``X-Redis-Breaker-Token``), also see
errors, latencies and the outbox.
"""

from __future__ import annotations

import hmac

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from ._state import State
from .conf import conf
from .health import get_redis_status, status_breakers

__all__ = ["status"]


def _may_see_details(request: HttpRequest) -> bool:
    user = getattr(request, "user", None)
    if user is not None and getattr(user, "is_staff", False) and user.is_active:
        return True
    token = conf.REDIS_BREAKER_STATUS_TOKEN
    if not token:
        return False
    given = request.headers.get("X-Redis-Breaker-Token", "")
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        given = auth[len("Bearer "):]
    return bool(given) and hmac.compare_digest(given.encode(), str(token).encode())


@never_cache
@require_GET
def status(request: HttpRequest) -> JsonResponse:
    """200 ``{"healthy": true, ...}`` or 503 while any breaker is open."""
    if _may_see_details(request):
        body = get_redis_status()
    else:
        found, unusable = status_breakers()
        states: dict[str, str | None] = {name: b.state.value for name, b in found.items()}
        states.update(dict.fromkeys(unusable))  # null: the breaker cannot be created
        body = {
            "healthy": not any(s is None or State(s).rejects for s in states.values()),
            "breakers": {name: {"state": s} for name, s in sorted(states.items())},
        }
    return JsonResponse(body, status=200 if body["healthy"] else 503)
