"""Django features that sit on the cache, through the real test client with Redis stopped."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tests.harness import RedisServer

from . import urls
from .conftest import TEMPLATES_DIR, caches_for


@pytest.fixture
def site(settings: Any, redis_server: RedisServer) -> RedisServer:
    """The test URLconf and templates over a BreakerCache on the real server."""
    settings.CACHES = caches_for(redis_server.url)
    settings.ROOT_URLCONF = "tests.cache.urls"
    settings.TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates",
                           "DIRS": [str(TEMPLATES_DIR)], "APP_DIRS": True, "OPTIONS": {}}]
    urls.CALLS["cached"] = 0
    return redis_server


def test_cache_page_answers_200_with_redis_stopped(site: RedisServer, client: Client) -> None:
    """A cache_page view renders while Redis is down, then is cached in the fallback."""
    assert client.get("/cached/").content == b"rendered 1"
    assert client.get("/cached/").content == b"rendered 1"  # from Redis
    site.stop()
    responses = [client.get("/cached/") for _ in range(8)]
    assert all(r.status_code == 200 for r in responses)
    # Once the outage is known, the page is cached locally: rendered once more, not 8 times.
    assert urls.CALLS["cached"] <= 3


def test_fragment_cache_renders_with_redis_stopped(site: RedisServer, client: Client) -> None:
    """``{% cache %}`` fragments render with Redis down."""
    assert client.get("/fragment/", {"name": "up"}).content.strip() == b"Hello up"
    site.stop()
    for _ in range(7):
        response = client.get("/fragment/", {"name": "down"})
        assert response.status_code == 200
        assert response.content.strip() == b"Hello down"


@pytest.mark.django_db
def test_cached_db_sessions_keep_users_logged_in(site: RedisServer, settings: Any,
                                                 client: Client) -> None:
    """With the cached_db session engine, a logged-in user stays logged in while Redis is down."""
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
    user = User.objects.create_user("ada", password="pw")
    client.force_login(user)
    assert client.get("/whoami/").content == b"ada"
    site.stop()
    for _ in range(7):
        assert client.get("/whoami/").content == b"ada"
    other = Client()
    other.force_login(User.objects.create_user("bob", password="pw"))  # logging in works too
    assert other.get("/whoami/").content == b"bob"


@pytest.mark.django_db
def test_cache_only_sessions_are_lost_during_an_outage(site: RedisServer, settings: Any,
                                                       client: Client) -> None:
    """With the pure cache session engine the session lives only in Redis: users are logged out."""
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.cache"
    client.force_login(User.objects.create_user("ada", password="pw"))
    assert client.get("/whoami/").content == b"ada"
    site.stop()
    response = client.get("/whoami/")
    assert response.status_code == 200  # no error page, but no session either
    assert response.content == b"anonymous"
