"""Storage URLs without their secrets: what is written and printed, and where the password
comes from when a run is continued.

A storage URL's password is never written (``config.yaml``, the study's attributes) nor printed:
:func:`mask_url` replaces it with ``***``. A process that opens a masked URL gets the password
back from (in order) a full URL this process was given for the same server, database and user
(``--storage`` on the worker's or the resume's command line, see :func:`remember`), the
environment variable ``AUTOPRUNE_STORAGE_PASSWORD``, or else none, so that the driver's own
sources apply (libpq: ``PGPASSWORD``, ``~/.pgpass``). Local worker processes inherit the
password through that variable (:func:`secret_env`), never through their command line.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import unquote

__all__ = ["ENV_PASSWORD", "MASK", "has_password", "mask_url", "remember", "resolve_password",
           "scrub", "secret_env"]

ENV_PASSWORD = "AUTOPRUNE_STORAGE_PASSWORD"
MASK = "***"
# scheme://user:password@ (password up to the last '@' before the path)
_USERINFO = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@?#]*):(?P<pw>[^?#]*)@")
_QUERY_PW = re.compile(r"(?P<key>[?&](?:password|passwd)=)(?P<pw>[^&#]*)", re.IGNORECASE)
_given: list[str] = []  # full URLs this process was given (never written anywhere)


def _parse(url: str) -> Any | None:
    """A SQLAlchemy URL object, or None for anything SQLAlchemy cannot parse."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url)
    except Exception:  # not a SQLAlchemy URL (a journal path, a redis URL, garbage)
        return None


def _password(url: str) -> str | None:
    parsed = _parse(url)
    if parsed is not None and parsed.password is not None:
        return str(parsed.password)
    match = _USERINFO.match(url) or _QUERY_PW.search(url)
    return unquote(match.group("pw")) if match else None


def has_password(url: str | None) -> bool:
    """Whether ``url`` carries a real password (a masked one does not count)."""
    if not url:
        return False
    password = _password(url)
    return bool(password) and password != MASK


def mask_url(url: str | None) -> str | None:
    """``url`` with its password (user info or a ``password=`` query parameter) as ``***``."""
    if not url:
        return url
    out = _USERINFO.sub(lambda m: f"{m.group('head')}:{MASK}@" if m.group("pw") else m[0], url)
    return _QUERY_PW.sub(lambda m: f"{m.group('key')}{MASK}", out)


def scrub(text: str, url: str | None) -> str:
    """``text`` (an error message, say) with ``url``'s password, raw or decoded, as ``***``."""
    password = _password(url) if url else None
    if password and password != MASK:
        for secret in {password, _quote(password)}:
            text = text.replace(secret, MASK)
    return text


def _quote(password: str) -> str:
    from urllib.parse import quote

    return quote(password, safe="")


def remember(url: str | None) -> None:
    """Keep a full URL given to this process (``--storage`` again on resume or to a worker) so
    that :func:`resolve_password` can fill in a masked URL of the same server."""
    if has_password(url) and url not in _given:
        _given.append(str(url))


def _same_target(a: Any, b: Any) -> bool:
    keys = ("host", "port", "database", "username")
    return a.drivername.split("+")[0] == b.drivername.split("+")[0] and \
        all(getattr(a, k) == getattr(b, k) for k in keys)


def resolve_password(url: str, given: str | None = None) -> str:
    """The URL to connect with: a masked ``url`` gets its password back from ``given`` (or a
    URL passed to :func:`remember`) naming the same server, database and user, else from
    ``AUTOPRUNE_STORAGE_PASSWORD``, else it is left out (libpq reads ``PGPASSWORD`` or
    ``~/.pgpass``). A URL with a real password, or none, is returned as it is."""
    if given is not None:
        remember(given)
    parsed = _parse(url)
    if parsed is None or parsed.password != MASK:
        return url
    for full in reversed(_given):
        other = _parse(full)
        if other is not None and _same_target(parsed, other):
            return full
    env = os.environ.get(ENV_PASSWORD)
    from sqlalchemy.engine import URL

    filled = URL.create(parsed.drivername, parsed.username, env or None, parsed.host,
                        parsed.port, parsed.database, parsed.query)
    return str(filled.render_as_string(hide_password=False))


def secret_env(url: str | None) -> dict[str, str]:
    """Environment for a child process that must open ``url`` from a masked copy: its password
    in ``AUTOPRUNE_STORAGE_PASSWORD`` (empty when ``url`` has none)."""
    password = _password(url) if url else None
    return {ENV_PASSWORD: password} if password and password != MASK else {}
