"""Loading a study: a file, a whole document or a bare spec, validated with field paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from trial_runner.spec._errors import FieldError, SpecError, pydantic_errors
from trial_runner.spec._models import KIND, HPOStudy, StudySpec
from trial_runner.spec._rules import semantic_errors

__all__ = ["load_study", "study_from_mapping", "validate_spec_mapping"]


def validate_spec_mapping(raw: Any, prefix: str = "spec") -> StudySpec:
    """Validate a bare ``spec`` mapping (as the operator reads it from the API server)."""
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as exc:
        errors = pydantic_errors(exc)
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
    """Validate a whole HPOStudy document (apiVersion, kind, metadata, spec)."""
    if not isinstance(raw, dict):
        raise SpecError(
            [FieldError("", f"expected an HPOStudy mapping, got {type(raw).__name__}")], source
        )
    try:
        study = HPOStudy.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(pydantic_errors(exc), source) from None
    problems = semantic_errors(study.spec)
    if problems:
        raise SpecError(problems, source)
    return study


def load_study(path: str | Path) -> HPOStudy:
    """Load and validate a study file; every problem is reported as a :class:`SpecError`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError([FieldError("", f"cannot read file: {exc.strerror}")], str(path)) from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError([FieldError("", f"not valid YAML{where}")], str(path)) from None
    studies = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if len(docs) == 1:
        return study_from_mapping(docs[0], str(path))
    if len(studies) != 1:
        raise SpecError(
            [FieldError("", f"expected exactly one HPOStudy document, found {len(studies)}")],
            str(path),
        )
    return study_from_mapping(studies[0], str(path))
