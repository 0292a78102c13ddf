"""The journal file of local studies: Optuna's, with ``fsync`` only where it matters."""

from __future__ import annotations

import json
from typing import Any

from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._storage import JournalOperation

__all__ = ["SyncedJournal"]

#: Journal operations written to disk at once (fsync); others reach the disk with the next.
_SYNCED_OPERATIONS = frozenset(
    {
        JournalOperation.CREATE_STUDY,
        JournalOperation.DELETE_STUDY,
        JournalOperation.SET_STUDY_USER_ATTR,
        JournalOperation.SET_STUDY_SYSTEM_ATTR,
        JournalOperation.CREATE_TRIAL,
        JournalOperation.SET_TRIAL_STATE_VALUES,
        JournalOperation.DISCARD_TRIALS,
    }
)


class SyncedJournal(JournalFileBackend):
    """Optuna's journal file, with ``fsync`` only where a trial is created or finished (and on
    the study's own changes) instead of after every append.

    A trial used to cost about ten ``fsync`` calls (each parameter, attribute and reported
    value), a few milliseconds each on an ordinary disk. Every append still reaches the file
    at once (the page cache), so other processes read it and a crashed process loses nothing;
    only a power loss can drop the attributes a running trial wrote since its last synced
    append, and a running trial is re-run then anyway. ``fsync`` writes out every earlier
    append of the file, so a finished trial is on disk whole.
    """

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        if any(log.get("op_code") in _SYNCED_OPERATIONS for log in logs):
            super().append_logs(logs)
            return
        text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
        self._lock.acquire()
        try:
            with open(self._file_path, "ab") as f:
                f.write(text.encode("utf-8"))
        finally:
            self._lock.release()
