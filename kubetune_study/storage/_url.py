"""Storage URLs: which kind a URL names, its forms for SQLAlchemy and libpq, and its password
kept out of every message (:func:`redact`)."""

from __future__ import annotations

from pathlib import Path

from kubetune_api.redaction import redact

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
