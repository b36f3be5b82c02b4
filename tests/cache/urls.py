"""Views that sit on the cache: cache_page, fragment caching, sessions."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path
from django.views.decorators.cache import cache_page

from redis_breaker.views import status

CALLS = {"cached": 0}


@cache_page(60)
def cached(request: HttpRequest) -> HttpResponse:
    CALLS["cached"] += 1
    return HttpResponse(f"rendered {CALLS['cached']}")


def fragment(request: HttpRequest) -> HttpResponse:
    return render(request, "fragment.html", {"name": request.GET.get("name", "world")})


def whoami(request: HttpRequest) -> HttpResponse:
    user = request.user
    return HttpResponse(user.get_username() if user.is_authenticated else "anonymous")


urlpatterns = [
    path("cached/", cached),
    path("fragment/", fragment),
    path("whoami/", whoami),
    path("status/", status),
]
