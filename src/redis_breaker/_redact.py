"""Remove credentials from anything that may be logged or shown."""

from __future__ import annotations

import re

__all__ = ["describe_error", "redact"]

# scheme://user:password@host  or  scheme://password@host
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^@/\s'\"]*)@")
# password=secret, 'password': 'secret', "password": "secret"
_KEYWORD = re.compile(
    r"(?P<key>(?:password|passwd|pwd|auth|sentinel_password)['\"]?\s*[:=]\s*)"
    r"(?P<value>'[^']*'|\"[^\"]*\"|[^\s,;&)}\]]+)",
    re.IGNORECASE,
)


def _userinfo(match: re.Match[str]) -> str:
    user, sep, _secret = match["userinfo"].partition(":")
    if sep:
        return f"{match['scheme']}{user}:***@"
    return f"{match['scheme']}***@"


def _keyword(match: re.Match[str]) -> str:
    value = match["value"]
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match['key']}{quote}***{quote}"


def redact(text: str) -> str:
    """Return ``text`` with passwords in URLs and ``password=`` pairs masked."""
    if "@" in text:
        text = _URL_USERINFO.sub(_userinfo, text)
    return _KEYWORD.sub(_keyword, text)


def describe_error(exc: BaseException) -> str:
    """``"ConnectionError: Error 111 connecting to ..."`` without credentials."""
    message = str(exc)
    name = type(exc).__name__
    return redact(f"{name}: {message}" if message else name)
