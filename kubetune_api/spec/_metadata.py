"""A study's ``metadata``, checked as the API server checks an object's metadata.

The fields Kubernetes' ObjectMeta has are accepted (a study saved with ``kubectl get -o yaml``
carries ``uid``, ``resourceVersion``, ``managedFields`` ...) and any other is an unknown field,
as ``kubectl apply`` says. :func:`metadata_errors` checks what the API server validates itself:
the namespace (a DNS-1123 label), label keys and values, annotation keys and their total size.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from kubetune_api.spec._base import MAX_STUDY_NAME, NAME_PATTERN

if TYPE_CHECKING:  # the errors module reads the models, this one among them
    from kubetune_api.spec._errors import FieldError

__all__ = ["MAX_ANNOTATIONS_BYTES", "ObjectMeta", "metadata_errors"]

#: The most an object's annotations take, keys and values together (the API server's limit).
MAX_ANNOTATIONS_BYTES = 256 * 1024

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


class ObjectMeta(BaseModel):
    """Kubernetes' ObjectMeta: ``name`` as kubetune needs it, the rest as the API server has it."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    name: str = Field(pattern=NAME_PATTERN, max_length=MAX_STUDY_NAME)
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    generate_name: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: Any = None
    deletion_timestamp: Any = None
    deletion_grace_period_seconds: int | None = None
    finalizers: list[str] | None = None
    owner_references: list[Any] | None = None
    managed_fields: list[Any] | None = None
    self_link: str | None = None


def metadata_errors(meta: ObjectMeta) -> list[FieldError]:
    """What the API server would refuse in ``meta`` (paths below ``metadata``)."""
    from kubetune_api.spec._errors import FieldError, format_path

    errors: list[FieldError] = []
    if meta.namespace is not None and not _is_dns_label(meta.namespace):
        errors.append(
            FieldError(
                "metadata.namespace",
                f"{meta.namespace[:64]!r} is not a namespace name: lowercase letters, digits and "
                "'-', starting and ending with a letter or digit, at most 63 characters",
            )
        )
    for key, value in (meta.labels or {}).items():
        path = format_path(("metadata", "labels", key))
        errors.extend(FieldError(path, problem) for problem in _key_problems(key))
        if value and not (len(value) <= 63 and _QUALIFIED_NAME.fullmatch(value)):
            errors.append(
                FieldError(
                    path,
                    f"label value {value[:64]!r}: at most 63 characters, letters, digits, '-', "
                    "'_' and '.', starting and ending with a letter or digit (or empty)",
                )
            )
    annotations = meta.annotations or {}
    for key in annotations:
        path = format_path(("metadata", "annotations", key))
        # The API server checks annotation keys lowercased (label keys as they are).
        errors.extend(FieldError(path, problem) for problem in _key_problems(key.lower()))
    size = _size(annotations)
    if size > MAX_ANNOTATIONS_BYTES:
        errors.append(
            FieldError(
                "metadata.annotations",
                f"{size} bytes: an object's annotations take at most {MAX_ANNOTATIONS_BYTES}",
            )
        )
    return errors


def _is_dns_label(text: str) -> bool:
    return len(text) <= 63 and bool(_DNS_LABEL.fullmatch(text))


def _key_problems(key: str) -> list[str]:
    """Why ``key`` is not a label or annotation key (``[prefix/]name``)."""
    prefix, _, name = key.rpartition("/")
    problems: list[str] = []
    if "/" in key and not (0 < len(prefix) <= 253 and _DNS_SUBDOMAIN.fullmatch(prefix)):
        problems.append(
            f"key prefix {prefix[:64]!r} must be a DNS subdomain (lowercase letters, digits, "
            "'-' and '.', at most 253 characters)"
        )
    if not (0 < len(name) <= 63 and _QUALIFIED_NAME.fullmatch(name)):
        problems.append(
            f"key name {name[:64]!r}: 1 to 63 characters, letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit"
        )
    return problems


def _size(values: Mapping[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in values.items())
