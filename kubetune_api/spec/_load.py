"""Loading a study: a file, a text, a whole document or a bare spec, validated with field paths.

Whatever the input, the answer is a study or a :class:`SpecError` naming each problem's field:
bytes that are not UTF-8, YAML kubectl would not read, numbers JSON cannot carry, and inputs
too large for the API server are errors like any other, never a traceback.

A spec is validated as the API server stores it (:func:`as_api_server_stores`), so the same
document gets the same verdict from ``kubetune validate`` and ``kubectl apply``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kubetune_api.contract import KIND
from kubetune_api.spec._errors import (
    FieldError,
    SpecError,
    format_path,
    model_at,
    pydantic_errors,
)
from kubetune_api.spec._metadata import metadata_errors
from kubetune_api.spec._models import HPOStudy, StudySpec
from kubetune_api.spec._rules import semantic_errors
from kubetune_api.spec._yaml import load_yaml_documents

__all__ = [
    "CLIENT_SIDE_APPLY_BYTES",
    "MAX_DOCUMENT_BYTES",
    "as_api_server_stores",
    "load_study",
    "study_from_mapping",
    "study_from_text",
    "validate_spec_mapping",
]

#: The largest study file read: etcd refuses a request above 1.5 MiB (its default
#: ``--max-request-bytes``), so a larger object never reaches the cluster, whatever the API
#: server's own 3 MiB limit on a request body.
MAX_DOCUMENT_BYTES = 3 * 2**19
#: The most a client-side ``kubectl apply`` can record of an object: it keeps the whole object
#: in the ``kubectl.kubernetes.io/last-applied-configuration`` annotation, and an object's
#: annotations take at most 256 KiB. A larger study is applied with ``--server-side``.
CLIENT_SIDE_APPLY_BYTES = 2**18
#: Values a document may hold once aliases are expanded (more than its text can write out).
MAX_VALUES = 4 * 2**20

_INT64_MIN, _INT64_END = -(2**63), 2**63


def as_api_server_stores(spec: Any, prefix: str = "spec") -> Any:
    """``spec`` as the API server stores it, which is what the operator and runners read.

    * An integer beyond 64 bits is a float (JSON decoding makes it one), and a float is never
      an integer: ``5.0`` is refused where an integer goes, as the API server's CEL rules refuse
      it (YAML is another matter: kubectl sends ``5.0`` as ``5``, and so does
      :func:`~kubetune_api.spec.load_yaml_documents`).
    * A ``null`` field of the spec is dropped, as if absent; a null in free-form content
      (``task.config``) is kept, and so is an unknown field (it is an error, null or not).
    * A number that is not finite cannot be sent at all: an error at its path.

    Raises :class:`SpecError` for a non-finite number or a spec of more than
    :data:`MAX_VALUES` values (a YAML alias bomb), or nested too deeply to walk.
    """
    counter = [0]
    try:
        return _stored(spec, (prefix,), counter)
    except RecursionError:
        raise SpecError([FieldError(prefix, "nested too deeply")]) from None


def _stored(value: Any, path: tuple[str | int, ...], counter: list[int]) -> Any:
    counter[0] += 1
    if counter[0] > MAX_VALUES:
        raise SpecError([FieldError(str(path[0]), f"more than {MAX_VALUES} values: too large")])
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if _INT64_MIN <= value < _INT64_END else _as_float(value, path)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SpecError([FieldError(format_path(path), "must be a finite number")])
        return value
    if isinstance(value, dict):
        # The spec is HPOStudy.spec, whatever the prefix its errors are named with.
        model = model_at(("spec", *path[1:]))
        fields = {f.alias or n for n, f in model.model_fields.items()} if model else set()
        return {
            key: _stored(item, (*path, key), counter)
            for key, item in value.items()
            if item is not None or key not in fields
        }
    if isinstance(value, list):
        return [_stored(item, (*path, i), counter) for i, item in enumerate(value)]
    return value


def _guard_values(document: dict[Any, Any]) -> None:
    """Refuse a document part (all but the spec, which :func:`as_api_server_stores` walks) of
    more than :data:`MAX_VALUES` values once aliases are expanded: an alias bomb in
    ``metadata`` or ``status`` is refused like one in the spec, before anything reads it."""
    counted = 0
    for key, value in document.items():
        stack = [value]
        while stack:
            counted += 1
            if counted > MAX_VALUES:
                raise SpecError([FieldError(str(key), f"more than {MAX_VALUES} values: too large")])
            node = stack.pop()
            if isinstance(node, dict):
                stack.extend(node.keys())
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)


def _as_float(value: int, path: tuple[str | int, ...]) -> float:
    try:
        return float(value)
    except OverflowError:
        raise SpecError([FieldError(format_path(path), "must be a finite number")]) from None


def validate_spec_mapping(raw: Any, prefix: str = "spec") -> StudySpec:
    """Validate a bare ``spec`` mapping (as the operator reads it from the API server)."""
    stored = as_api_server_stores(raw, prefix)
    try:
        spec = StudySpec.model_validate(stored, by_alias=True, by_name=False)
    except ValidationError as exc:
        errors = pydantic_errors(exc, stored)
        raise SpecError(
            [FieldError(_prefixed(prefix, e.path), e.message) for e in errors]
        ) from None
    problems = semantic_errors(spec, prefix)
    if problems:
        raise SpecError(problems)
    return spec


def _prefixed(prefix: str, path: str) -> str:
    if not path:
        return prefix
    return f"{prefix}{path}" if path.startswith("[") else f"{prefix}.{path}"


def study_from_mapping(raw: Any, source: str | None = None) -> HPOStudy:
    """Validate a whole HPOStudy document (apiVersion, kind, metadata, spec; a ``status``, as
    ``kubectl get -o yaml`` saves one, is accepted and ignored, as the API server ignores it).

    Fields are read by the names the API server knows (``maxTrials``, never ``max_trials``)."""
    if not isinstance(raw, dict):
        raise SpecError(
            [FieldError("", f"expected an HPOStudy mapping, got {type(raw).__name__}")], source
        )
    try:
        _guard_values({k: v for k, v in raw.items() if k != "spec"})
        document = {**raw, "spec": as_api_server_stores(raw["spec"])} if "spec" in raw else raw
    except SpecError as error:
        raise SpecError(error.errors, source) from None
    try:
        study = HPOStudy.model_validate(document, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise SpecError(pydantic_errors(exc, document), source) from None
    problems = metadata_errors(study.metadata) + semantic_errors(study.spec)
    if problems:
        raise SpecError(problems, source)
    return study


def study_from_text(text: str, source: str) -> HPOStudy:
    """The HPOStudy in a YAML (or JSON) text: its only document, or the one of kind HPOStudy
    among several (a file may carry the Secret too)."""
    documents = _documents(text, source)
    if len(documents) == 1:
        return study_from_mapping(documents[0], source)
    studies = [d for d in documents if isinstance(d, dict) and d.get("kind") == KIND]
    if len(studies) != 1:
        raise SpecError(
            [FieldError("", f"expected exactly one HPOStudy document, found {len(studies)}")],
            source,
        )
    return study_from_mapping(studies[0], source)


def _documents(text: str, source: str) -> list[Any]:
    if len(text) > MAX_DOCUMENT_BYTES:
        raise SpecError([FieldError("", _too_large(len(text.encode(errors="replace"))))], source)
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        message = f"not valid UTF-8 (at character {exc.start})"
        raise SpecError([FieldError("", message)], source) from None
    try:
        return load_yaml_documents(text)
    except yaml.YAMLError as exc:
        raise SpecError([FieldError("", _yaml_problem(exc))], source) from None
    except RecursionError:
        raise SpecError([FieldError("", "not valid YAML: nested too deeply")], source) from None
    except (ValueError, TypeError, OverflowError) as exc:  # an explicit tag's value (!!float x)
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpecError([FieldError("", f"not valid YAML: {message}")], source) from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or ["unreadable"])[0]
    return f"not valid YAML{where}: {problem}"


def _too_large(size: int) -> str:
    return (
        f"{size} bytes is more than the {MAX_DOCUMENT_BYTES} bytes (1.5 MiB) a cluster stores "
        "of one object (etcd's request limit)"
    )


def load_study(path: str | Path) -> HPOStudy:
    """Load and validate a study file; every problem is reported as a :class:`SpecError`."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = file.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise SpecError([FieldError("", f"cannot read file: {exc.strerror}")], str(path)) from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise SpecError([FieldError("", _too_large(path.stat().st_size))], str(path))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        byte = data[exc.start]
        raise SpecError(
            [
                FieldError(
                    "",
                    f"not valid UTF-8 (byte 0x{byte:02x} at offset {exc.start}): save the file "
                    "as UTF-8",
                )
            ],
            str(path),
        ) from None
    return study_from_text(text, str(path))
