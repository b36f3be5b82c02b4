"""Remove credentials from anything that may be logged or shown.

One routine serves every output of the library: log events, error texts,
``repr``/``str`` of the configuration, ``stats()``, the status command and
view, health checks, the outbox rows' error text, system-check messages and
the state file. It masks:

- **A URL's user name and password**, read the way redis-py reads them
  (``urllib.parse``, as ``redis.connection.parse_url`` does): everything before
  the *last* ``@`` of the host part, so a user name or password holding ``@``,
  ``:``, spaces, quotes or percent-escapes is masked whole. When an ``@``
  comes after the host part (a raw ``/``, ``?`` or ``#`` in a password, which
  redis-py cannot read either), everything from the scheme to that ``@`` is
  masked as well.
- **Query-string values**, except those of a few parameters that are known to
  carry no secret (``db``, the socket timeouts, ...): a parameter is judged by
  its name as redis-py decodes it, so ``?pass%77ord=...`` is masked like
  ``?password=...``. Fragments (``#...``) are masked.
- **``password=...`` pairs** outside URLs (``{'password': '...'}`` in a
  ``repr``, ``password=...`` in a message).
- **Every password this process has been given in a URL**
  (``remember_url``), wherever it appears, in its plain, percent-encoded,
  ``repr`` and JSON spellings (passwords of at least four characters: a
  shorter one would mask ordinary words; it is still masked inside URLs).

Sentinel (``redis+sentinel://``, ``sentinel://a;sentinel://b``) and unix
socket (``unix://``) URLs are read the same way. Settings that are bytes,
lists or dicts are masked element by element (``redact_value``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

__all__ = ["MASK", "describe_error", "redact", "redact_url", "redact_value", "remember_url",
           "shown"]

MASK = "***"

#: Query parameters whose values are shown: redis-py's connection options that hold no
#: secret. Every other parameter's value is masked, whatever its spelling.
SHOWN_QUERY = frozenset({
    "db", "socket_timeout", "socket_connect_timeout", "socket_keepalive", "socket_read_size",
    "retry_on_timeout", "max_connections", "health_check_interval", "timeout", "protocol",
    "ssl_cert_reqs", "ssl_check_hostname", "ssl_min_version", "ssl_ca_certs", "ssl_ca_path",
    "ssl_certfile", "ssl_keyfile", "ssl_include_verify_flags", "ssl_exclude_verify_flags",
    "decode_responses", "encoding", "encoding_errors", "client_name", "lib_name", "lib_version",
    "legacy_responses", "readonly", "master_name",
})

#: A scheme that starts a URL in free text: not inside a word, a password or an escape.
_SCHEME = re.compile(r"(?<![A-Za-z0-9+.\-:@%\\])[A-Za-z][A-Za-z0-9+.\-]*://")
_LINE_END = re.compile(r"[\r\n]")
_VALUE_URL = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.\-]*://")
# password=secret, 'password': 'secret', "password": "secret", password=b'secret'. An
# unquoted value runs to the next "name=" (a repr's "k=v,k=v" list, "a=1 b=2"), or to a
# quote, a closing bracket, ';', '&' or the end of the line: commas and spaces may be in it.
_KEYWORD = re.compile(
    r"(?P<key>(?:password|passwd|pwd|auth|username|token|secret)['\"]?\s*[:=]\s*)"
    r"(?P<value>b?'(?:[^'\\]|\\.)*'|b?\"(?:[^\"\\]|\\.)*\""
    r"|(?:[^\s,;&)}\]>'\"]|[ \t,](?![,\s]{0,16}[A-Za-z_][A-Za-z0-9_]{0,64}=))+)",
    re.IGNORECASE,
)
#: Query parameters whose values are remembered (``remember_url``) as well as masked.
_CREDENTIAL = re.compile(r"pass|pwd|secret|token|auth|cred", re.IGNORECASE)
#: Shorter remembered secrets are masked inside URLs only: they would mask ordinary words.
MIN_REMEMBERED = 4
#: A process meets a few URLs; the oldest passwords are forgotten past this many.
_MAX_REMEMBERED = 64
_SHOWN_MAX = 200
#: Longer texts are no URL of a setting, and longer strings no password: not remembered.
_MAX_URL = 4096
_MAX_SECRET = 512


# ------------------------------------------------------------------ URLs
Span = tuple[int, int, str]  # start, end, what it holds (user, password, userinfo, query, fragment)


def _query_masks(s: str, start: int, end: int) -> list[Span]:
    """Spans of ``s[start:end]`` (a query string) whose text is a secret."""
    masks: list[Span] = []
    i = start
    while i < end:
        j = s.find("&", i, end)
        if j < 0:
            j = end
        eq = s.find("=", i, j)
        key = s[i:j] if eq < 0 else s[i:eq]
        # redis-py (parse_qs) decodes the name: pass%77ord and pass+word are what they say.
        name = unquote_plus(key, errors="replace").strip().lower()
        if name not in SHOWN_QUERY:
            if eq < 0:
                if j > i:
                    masks.append((i, j, "query"))
            elif j > eq + 1:
                masks.append((eq + 1, j, "query"))
        i = j + 1
    return masks


def _tail_masks(s: str, start: int, end: int) -> list[Span]:
    """Spans to mask in what follows a URL's host: its query's secrets and any fragment."""
    masks: list[Span] = []
    hash_at = s.find("#", start, end)
    query_end = end if hash_at < 0 else hash_at
    question = s.find("?", start, query_end)
    if question >= 0:
        masks += _query_masks(s, question + 1, query_end)
    if hash_at >= 0 and hash_at + 1 < end:
        masks.append((hash_at + 1, end, "fragment"))
    return masks


def _netloc_end(s: str, start: int, end: int) -> int:
    i = start
    while i < end and s[i] not in "/?#":
        i += 1
    return i


def _may_hide_userinfo(s: str, start: int, end: int) -> bool:
    """Whether an '@' after the host part may end a user name or password: always, but in
    ``unix:///path`` (a socket's path may hold an '@')."""
    return not (s.startswith("/", start, end) and s[max(0, start - 7):start - 3].lower() == "unix")


def _url_masks(s: str, start: int, end: int) -> list[Span]:
    """Spans to mask in the URL ``s[start:end]``, whose scheme's ``://`` ends at ``start``."""
    masks: list[Span] = []
    netloc_end = _netloc_end(s, start, end)
    at = s.rfind("@", start, netloc_end)
    if at >= 0:
        # As urllib (and so redis-py) reads it: user name and password are split at the
        # first ':' of what comes before the last '@'.
        colon = s.find(":", start, at)
        if colon < 0:
            if at > start:
                masks.append((start, at, "user"))
        else:
            if colon > start:
                masks.append((start, colon, "user"))
            if at > colon + 1:
                masks.append((colon + 1, at, "password"))
    last = s.rfind("@", netloc_end, end) if _may_hide_userinfo(s, start, end) else -1
    if last >= 0:
        # An '@' after the host part: a raw '/', '?' or '#' in a user name or password cut
        # the host part short. Whatever reading was meant, nothing before that '@' shows.
        masks.append((start, last, "userinfo"))
        masks += _tail_masks(s, last + 1, end)
    masks += _tail_masks(s, netloc_end, end)
    return masks


def _apply(s: str, masks: list[Span]) -> str:
    if not masks:
        return s
    masks.sort()
    out: list[str] = []
    position = 0
    current_start, current_end, _ = masks[0]
    for a, b, _ in masks[1:]:
        if a <= current_end:
            current_end = max(current_end, b)
            continue
        out += [s[position:current_start], MASK]
        position = current_end
        current_start, current_end = a, b
    out += [s[position:current_start], MASK, s[current_end:]]
    return "".join(out)


def _url_end(text: str, start: int, line_end: int) -> int:
    """Where the URL whose ``://`` ends at ``start`` ends in free text.

    At the next URL of its line (``a;b``, ``a and b``), unless that ``scheme://``
    is inside this URL's password: this URL has no '@' before it and its host
    part runs into it. Else at the end of its line.
    """
    netloc_end = _netloc_end(text, start, line_end)
    for following in _SCHEME.finditer(text, start, line_end):
        cut = following.start()
        if "@" in text[start:cut] or netloc_end < cut:
            return cut
    return line_end


def _structural(text: str, *, lines: bool = True) -> str:
    """``text`` with the credentials of every URL in it masked; with ``lines``, a URL ends
    at the end of its line at the latest (free text), else it may span lines (a value)."""
    if "://" not in text:
        return text
    masks: list[Span] = []
    position = 0
    line_end = -1  # the end of the line being read, found once per line
    while True:
        match = _SCHEME.search(text, position)
        if match is None:
            break
        start = match.end()
        if start > line_end:
            found = _LINE_END.search(text, start) if lines else None
            line_end = found.start() if found is not None else len(text)
        end = _url_end(text, start, line_end)
        masks += _url_masks(text, start, end)
        position = max(end, start)
    return _apply(text, masks)


def _keywords(text: str) -> str:
    def keyword(match: re.Match[str]) -> str:
        value = match["value"]
        prefix = "b" if value.startswith("b") and value[1:2] in ("'", '"') else ""
        quote_char = value[len(prefix)] if value[len(prefix):len(prefix) + 1] in ("'", '"') else ""
        return f"{match['key']}{prefix}{quote_char}{MASK}{quote_char}"

    return _KEYWORD.sub(keyword, text)


# ------------------------------------------------------------ remembered secrets
class _Remembered:
    """Passwords seen in URLs, and every spelling of them, longest first."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.secrets: dict[str, None] = {}
        #: Replaced in one assignment, so readers need no lock.
        self.spellings: tuple[str, ...] = ()

    def add(self, secrets: list[str]) -> None:
        fresh = [s for s in secrets
                 if MIN_REMEMBERED <= len(s) <= _MAX_SECRET and s not in self.secrets]
        if not fresh:
            return
        with self.lock:
            for secret in fresh:
                self.secrets[secret] = None
            while len(self.secrets) > _MAX_REMEMBERED:
                del self.secrets[next(iter(self.secrets))]
            spellings: set[str] = set()
            for secret in self.secrets:
                spellings.update(_spellings(secret))
            self.spellings = tuple(sorted((s for s in spellings if len(s) >= MIN_REMEMBERED),
                                          key=len, reverse=True))


def _spellings(secret: str) -> set[str]:
    """How ``secret`` may appear in a text: plain, percent-encoded, in a repr, in JSON."""
    forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret),
             json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1],
             repr(secret)[1:-1], secret.encode("unicode_escape").decode("ascii")}
    with contextlib.suppress(UnicodeEncodeError):  # a lone surrogate has no UTF-8
        forms.add(repr(secret.encode("utf-8"))[2:-1])
    return forms


_REMEMBERED = _Remembered()


def _url_secrets(url: str) -> list[str]:
    """The passwords and secret query values of ``url`` (one URL value), as written and as sent.

    User names are masked in URLs but not remembered: they are often plain words
    (``default``) that would be masked everywhere.
    """
    found: list[str] = []
    match = re.match(r"\s*[A-Za-z][A-Za-z0-9+.\-]*://", url)
    if match is None:
        return found
    for a, b, what in _url_masks(url, match.end(), len(url)):
        raw = url[a:b]
        if what == "user" or what == "fragment":
            continue
        if what == "query":
            eq = url.rfind("=", 0, a)
            amp = max(url.rfind("&", 0, eq), url.rfind("?", 0, eq))
            if eq != a - 1 or not _CREDENTIAL.search(unquote_plus(url[amp + 1:eq])):
                continue  # not a credential's value: masked in URLs, not searched for
        if what == "userinfo":  # the password is what follows the user name's ':'
            raw = raw.partition(":")[2] or raw
        found += [raw, unquote(raw, errors="replace"), unquote_plus(raw, errors="replace")]
    return found


def _urls_of(value: str) -> list[str]:
    """The URLs in one setting value (a ``;``-separated list of URLs for Celery/kombu)."""
    return [part for part in re.split(r";(?=\s*[A-Za-z][A-Za-z0-9+.\-]*://)", value) if part]


def remember_url(url: Any) -> None:
    """Note the passwords of ``url``, so that they are masked wherever they appear later."""
    if isinstance(url, (bytes, bytearray)):
        url = bytes(url).decode("utf-8", "replace")
    if not isinstance(url, str) or "://" not in url or len(url) > _MAX_URL:
        return
    secrets: list[str] = []
    for part in _urls_of(url):
        secrets += _url_secrets(part)
    _REMEMBERED.add(secrets)


def _remembered(text: str) -> str:
    for spelling in _REMEMBERED.spellings:  # a few hundred substring tests at most
        if spelling in text:
            text = text.replace(spelling, MASK)
    return text


# ------------------------------------------------------------------ API
def redact_url(url: str) -> str:
    """One URL value (or a ``;``-separated list of them) with its credentials masked.

    The password is also remembered (``remember_url``), so that it is masked
    in any later text.
    """
    remember_url(url)
    return _remembered(_structural(url, lines=False))


def redact(text: str) -> str:
    """``text`` with credentials masked: in every URL, in ``password=`` pairs, and every
    password this process was given in a URL."""
    if not text:
        return text
    if _VALUE_URL.match(text):
        remember_url(text)  # a URL on its own (a breaker's URL in stats(), a state file)
    # password= pairs first: a URL's user name and password end at the last '@' of its
    # line, which may be inside such a pair.
    return _remembered(_structural(_keywords(text)))


def _redact_string(text: str) -> str:
    """A string that is a URL (a setting) is masked whole, line breaks and all; other
    text as free text."""
    if _VALUE_URL.match(text):
        remember_url(text)
        return _remembered(_keywords(_structural(text, lines=False)))
    return redact(text)


def redact_value(value: Any, _depth: int = 0) -> Any:
    """A copy of a setting's value with credentials masked: strings, bytes, and the strings
    inside lists, tuples, sets and dicts (other objects are returned as they are)."""
    if _depth > 8:
        return value
    if isinstance(value, str):
        return _redact_string(value)
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("utf-8", "surrogateescape")
        return type(value)(_redact_string(text).encode("utf-8", "surrogateescape"))
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [redact_value(item, _depth + 1) for item in value]
        try:
            return type(value)(items)
        except TypeError:  # a named tuple, or a subclass with another constructor
            return items
    if isinstance(value, Mapping):
        return {redact_value(k, _depth + 1): redact_value(v, _depth + 1)
                for k, v in value.items()}
    return value


def shown(value: Any) -> str:
    """``value`` for a message: its type and repr, never a credential."""
    try:
        text = repr(redact_value(value))
    except Exception:  # a repr that raises
        text = f"<{type(value).__name__} object>"
    if len(text) > _SHOWN_MAX:
        text = text[:_SHOWN_MAX] + "..."
    return redact(f"{type(value).__name__} {text}")


def describe_error(exc: BaseException) -> str:
    """``"ConnectionError: Error 111 connecting to ..."`` without credentials."""
    try:
        message = str(exc)
    except Exception:  # a __str__ that raises
        message = ""
    name = type(exc).__name__
    return redact(f"{name}: {message}" if message else name)


def _after_fork_in_child() -> None:
    _REMEMBERED.lock = threading.Lock()  # the secrets stay; a parent's thread held the lock


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
