"""Passwords kept out of every message: a storage URL's ``user:password@`` replaced, wherever it
is quoted (a log line, a status, an error about a spec a URL was pasted into)."""

from __future__ import annotations

import re

__all__ = ["redact"]

#: ``user:password@`` of a URL, with its scheme if it has one, in a URL or in a message that
#: quotes one; the password runs to the last ``@`` before a space or quote, so a password with
#: an unencoded ``@`` or ``/`` (a URL nothing can parse) is hidden whole. Bounded (a user name
#: of 256 characters, a password of 1 KiB), so a long text costs linear time.
_CREDENTIALS = re.compile(
    r"(?P<keep>(?:[A-Za-z][A-Za-z0-9+.-]{0,31}:/*)?[^\s:/@'\"]{0,256}):[^\s'\"]{0,1024}@"
)


def redact(text: str) -> str:
    """``text`` (a storage URL, or a message quoting one) with every password replaced, safe for
    logs, errors and statuses, whether or not the URL is well formed."""
    if "@" not in text or ":" not in text:
        return text
    return _CREDENTIALS.sub(lambda m: f"{m['keep']}:***@", text)
