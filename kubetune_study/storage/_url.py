"""Storage URLs: which kind a URL names, its forms for SQLAlchemy and libpq, and its password
kept out of every message (:func:`redact`)."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "StorageError",
    "is_postgres",
    "journal_path",
    "libpq_url",
    "redact",
    "sqlalchemy_url",
]


class StorageError(RuntimeError):
    """The storage URL is unusable; the message never contains the password."""


#: ``user:password@`` of a URL, with its scheme if it has one, in a URL or in a message that
#: quotes one; the password runs to the last ``@`` before a space or quote, so a password with
#: an unencoded ``@`` or ``/`` (a URL nothing can parse) is hidden whole.
_CREDENTIALS = re.compile(r"(?P<keep>(?:[A-Za-z][A-Za-z0-9+.-]*:/*)?[^\s:/@'\"]*):[^\s'\"]*@")


def redact(text: str) -> str:
    """``text`` (a storage URL, or a message quoting one) with every password replaced, safe for
    logs, errors and statuses, whether or not the URL is well formed."""
    return _CREDENTIALS.sub(lambda m: f"{m['keep']}:***@", text)


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgresql+psycopg2://", "postgres://"))


def sqlalchemy_url(url: str) -> str:
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def libpq_url(url: str) -> str:
    return "postgresql://" + url.split("://", 1)[1]


def journal_path(url: str) -> Path:
    raw = url[len("journal:") :]
    if raw.startswith("//"):
        raw = raw[2:]
    return Path(raw)
