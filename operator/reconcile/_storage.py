"""Why a study's storage URL cannot be found, in the words the status and events show (pure).

:mod:`hpo_operator._cluster` reads the Secrets and raises these; the pass shows the message as
the ``StorageUnavailable`` reason's.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["StorageMissing"]


class StorageMissing(Exception):
    """No storage URL can be found for a study; the message says where it was looked for."""

    @classmethod
    def secret_not_found(cls, namespace: str, name: str) -> StorageMissing:
        return cls(f"Secret {namespace}/{name} not found")

    @classmethod
    def key_not_found(
        cls, namespace: str, name: str, key: str, keys: Iterable[str]
    ) -> StorageMissing:
        return cls(
            f"Secret {namespace}/{name} has no key {key!r} (keys: {', '.join(sorted(keys))})"
        )

    @classmethod
    def not_configured(cls, secret_setting: str, url_setting: str) -> StorageMissing:
        """Neither the study nor the operator's settings (named) say where the storage is."""
        return cls(
            f"no storage: set spec.storage.secretRef, or run the operator with {secret_setting} "
            f"or {url_setting}"
        )
