"""The HPOStudy spec: one typed model shared by the operator, the runner and the local CLI.

The same YAML a user gives to ``kubectl apply`` is loaded here. Structure (types, enums,
required fields, unknown fields) is checked by pydantic in strict mode; rules that span fields
(``low < high``, stage groups, defaults inside their range, ...) are checked by
:func:`semantic_errors`, which reports every problem with its field path. The CRD's OpenAPI
schema is generated from these models (``hpo_operator.crd``) and its CEL rules mirror
:func:`semantic_errors`, so a spec that validates locally validates at apply time.

Numbers that are not counts are strings (``"1e-4"``), following the Kubernetes API convention
of no floats in specs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

__all__ = [
    "API_VERSION",
    "KIND",
    "Budget",
    "EarlyStopping",
    "EpochScheduleEntry",
    "FieldError",
    "HPOStudy",
    "Objective",
    "Parameter",
    "Pruner",
    "Resources",
    "Sampler",
    "SpecError",
    "Stage",
    "StudySpec",
    "Task",
    "Training",
    "format_path",
    "load_study",
    "parse_duration",
    "parse_number",
    "parse_quantity",
    "study_from_mapping",
    "validate_spec_mapping",
]

API_VERSION = "kubetune.dev/v1alpha1"
KIND = "HPOStudy"

NUMBER_PATTERN = r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$"
DURATION_PATTERN = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"
QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$"
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
PARAM_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
ENTRYPOINT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$"
GROUP_PATTERN = r"^[A-Z][A-Za-z0-9]*$"

# Study names become pod names "<name>-runner-<n>" and Optuna study names, so they must be
# DNS-1123 labels with room for the suffix.
MAX_STUDY_NAME = 48

# Bounds on lengths and counts also keep the CRD's CEL rules within the API server's cost budget.
Number = Annotated[str, Field(pattern=NUMBER_PATTERN, max_length=64)]
IntOrNumber = int | Annotated[str, Field(pattern=NUMBER_PATTERN, max_length=64)]
ChoiceValue = int | Annotated[str, Field(max_length=253)]


class _Model(BaseModel):
    """Base: camelCase field names, unknown fields rejected, no silent type coercion."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        frozen=True,
    )


class Objective(_Model):
    metric: str = Field(
        min_length=1, max_length=253, description="Name of the metric the task returns."
    )
    direction: Literal["Maximize", "Minimize"] = Field(
        default="Maximize", description="Whether larger or smaller metric values are better."
    )


class Task(_Model):
    entrypoint: str = Field(
        pattern=ENTRYPOINT_PATTERN,
        description="module:attribute of the task class, importable inside the runner image.",
    )
    image: str | None = Field(
        default=None, description="Runner image for the cluster; unused by local runs."
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="Free-form settings passed to the task unchanged."
    )


class Parameter(_Model):
    name: str = Field(pattern=PARAM_NAME_PATTERN, max_length=63)
    type: Literal["Float", "Int", "Categorical"]
    low: IntOrNumber | None = Field(default=None, description="Lower bound (Float, Int).")
    high: IntOrNumber | None = Field(default=None, description="Upper bound (Float, Int).")
    step: IntOrNumber | None = Field(default=None, description="Discretisation step.")
    scale: Literal["Linear", "Log"] = Field(default="Linear")
    choices: list[ChoiceValue] | None = Field(
        default=None,
        max_length=256,
        description="Values of a Categorical parameter (integers or strings).",
    )
    group: str = Field(default="Default", pattern=GROUP_PATTERN, max_length=63)
    default: ChoiceValue | None = Field(
        default=None,
        description="Value used while the parameter's group is not searched: a number for "
        "Float and Int, one of the choices for Categorical.",
    )


class Stage(_Model):
    name: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=63)
    groups: list[Annotated[str, Field(pattern=GROUP_PATTERN, max_length=63)]] = Field(
        min_length=1, max_length=64
    )
    trials: int | None = Field(
        default=None, ge=1, description="Trials of this stage; the last stage may take the rest."
    )


class Budget(_Model):
    max_trials: int = Field(ge=1, le=100000, description="Finished trials the study runs.")
    max_failed_trials: int | None = Field(
        default=None, ge=0, description="Failed trials after which the study is Failed."
    )
    timeout: str | None = Field(
        default=None, pattern=DURATION_PATTERN, description="Wall-clock limit, e.g. 6h or 90m."
    )


class Sampler(_Model):
    type: Literal["TPE", "Random", "CMAES", "GP", "QMC"] = "TPE"
    seed: int | None = None
    n_startup_trials: int | None = Field(default=None, ge=0)
    constant_liar: bool = Field(
        default=True, description="TPE only: treat running trials as bad to spread workers."
    )
    multivariate: bool = Field(default=True, description="TPE only.")


class Pruner(_Model):
    type: Literal["Nop", "Median", "Percentile", "Hyperband", "SuccessiveHalving", "Wilcoxon"] = (
        "Nop"
    )
    n_startup_trials: int | None = Field(default=None, ge=0)
    n_warmup_steps: int | None = Field(default=None, ge=0)
    percentile: Number | None = None
    min_resource: int | None = Field(default=None, ge=1)
    max_resource: int | None = Field(default=None, ge=1)
    reduction_factor: int | None = Field(default=None, ge=2)
    p_threshold: Number | None = None
    patience: int | None = Field(
        default=None, ge=0, description="Wrap the pruner in PatientPruner with this patience."
    )
    min_delta: Number | None = Field(default=None, description="PatientPruner min_delta.")


class EarlyStopping(_Model):
    patience: int = Field(ge=1)
    min_delta: Number = "0"


class EpochScheduleEntry(_Model):
    from_trial: int = Field(ge=0, description="First trial number this entry applies to.")
    epochs: int = Field(ge=1, le=100000)


class Checkpoint(_Model):
    directory: str = Field(min_length=1, description="Where the best trial's weights are kept.")


class Training(_Model):
    epochs: int = Field(default=10, ge=1, le=100000)
    epoch_schedule: list[EpochScheduleEntry] | None = Field(
        default=None,
        max_length=64,
        description="Epochs by trial number; overrides epochs where it applies.",
    )
    folds: int = Field(default=1, ge=1, le=50, description="k-fold CV; 1 means a holdout split.")
    report_every: Literal["Fold", "Epoch"] = Field(
        default="Fold", description="Report intermediate values to the pruner per fold or epoch."
    )
    validation_every: int = Field(default=1, ge=1, description="Validate every N epochs.")
    early_stopping: EarlyStopping | None = None
    precision: Literal["Auto", "BF16", "FP16", "FP32"] = Field(
        default="Auto",
        description="Auto: BF16 autocast on GPUs that support it, FP32 on CPUs (where BF16 is "
        "usually slower without native support); BF16 forces autocast on CPU too.",
    )
    tf32: bool = True
    cudnn_benchmark: bool = True
    fused_optimizer: bool = True
    pin_memory: bool = True
    compile: bool = False
    effective_batch_size: int | None = Field(
        default=None, ge=1, description="Batch per optimizer step when not searched."
    )
    batch_size_parameter: str = Field(
        default="batch_size",
        pattern=PARAM_NAME_PATTERN,
        max_length=63,
        description="Search-space parameter holding the effective batch size, if present.",
    )
    max_micro_batch: int | None = Field(
        default=None, ge=1, description="Upper bound on the micro-batch (memory cap)."
    )
    data_loader_workers: int = Field(default=0, ge=0, le=64)
    checkpoint: Checkpoint | None = None


class Resources(_Model):
    accelerator: Literal["Auto", "GPU", "MIG", "CPU"] = "Auto"
    parallelism: int = Field(default=1, ge=1, le=1000)
    memory_headroom: Number = Field(default="0.1", description="Fraction added to the estimate.")
    peak_memory: str | None = Field(
        default=None,
        pattern=QUANTITY_PATTERN,
        description="Peak training memory of the largest configuration; skips the estimate.",
    )
    cpu: str | None = Field(default=None, pattern=r"^([0-9]+m|[0-9]+(\.[0-9]+)?)$")
    memory: str | None = Field(default=None, pattern=QUANTITY_PATTERN)


class SecretKeyRef(_Model):
    name: str = Field(pattern=NAME_PATTERN, max_length=253)
    key: str = Field(default="url", min_length=1)


class Storage(_Model):
    secret_ref: SecretKeyRef | None = None
    deletion_policy: Literal["Retain", "Delete"] = Field(
        default="Retain", description="What happens to the Optuna study when the HPOStudy goes."
    )


class StudySpec(_Model):
    objective: Objective
    task: Task
    search_space: list[Parameter] = Field(min_length=1, max_length=64)
    stages: list[Stage] | None = Field(default=None, max_length=16)
    budget: Budget
    sampler: Sampler = Field(default_factory=Sampler)
    pruner: Pruner = Field(default_factory=Pruner)
    training: Training = Field(default_factory=Training)
    resources: Resources = Field(default_factory=Resources)
    storage: Storage = Field(default_factory=Storage)
    suspend: bool = False


class ObjectMeta(BaseModel):
    """The part of Kubernetes ObjectMeta a study file carries; the API server checks the rest."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, max_length=MAX_STUDY_NAME)
    namespace: str | None = None


class HPOStudy(_Model):
    api_version: Literal["kubetune.dev/v1alpha1"]
    kind: Literal["HPOStudy"]
    metadata: ObjectMeta
    spec: StudySpec

    @property
    def name(self) -> str:
        return self.metadata.name


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SpecError(ValueError):
    """A study spec is invalid; ``errors`` holds every problem with its field path."""

    def __init__(self, errors: list[FieldError], source: str | None = None) -> None:
        self.errors = errors
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        head = f"{self.source}: " if self.source else ""
        lines = [f"{head}invalid HPOStudy ({len(self.errors)} error(s))"]
        lines.extend(f"  {e}" for e in self.errors)
        return "\n".join(lines)


def format_path(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _accepted_fields(model: type[BaseModel]) -> str:
    return ", ".join(sorted((f.alias or n) for n, f in model.model_fields.items()))


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class that owns the object at ``loc`` (for naming the accepted fields)."""
    model: Any = HPOStudy
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = next(
            (f for n, f in model.model_fields.items() if (f.alias or n) == part),
            None,
        )
        if field is None:
            return None
        model = _unwrap_model(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def _clean_loc(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    # pydantic adds union-member tags ("int", "str", "constrained-str", "list[...]") to locs.
    return tuple(
        p
        for p in loc
        if isinstance(p, int) or not (p in {"int", "str", "bool"} or "[" in p or "-" in p)
    )


def _pydantic_errors(exc: ValidationError) -> list[FieldError]:
    errors: dict[str, FieldError] = {}
    for err in exc.errors():
        loc = _clean_loc(tuple(err["loc"]))
        path = format_path(loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            owner = _model_at(loc[:-1])
            accepted = f" (accepted: {_accepted_fields(owner)})" if owner else ""
            message = f"unknown field{accepted}"
        elif kind == "missing":
            message = "required field is missing"
        elif kind == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            message = f"must be one of {expected} (got {err['input']!r})"
        elif kind == "string_pattern_mismatch":
            message = f"{err['input']!r} is not accepted: {_pattern_hint(loc)}"
        else:
            message = f"{err['msg']} (got {err['input']!r})" if "input" in err else err["msg"]
        # Union members (int | "number") each report the same bad value; the pattern message
        # says what is accepted, so it wins over "not an integer".
        if path not in errors or kind == "string_pattern_mismatch":
            errors[path] = FieldError(path, message)
    return list(errors.values())


def _pattern_hint(loc: tuple[str | int, ...]) -> str:
    last = next((p for p in reversed(loc) if isinstance(p, str)), "")
    if last in {"low", "high", "step", "default"} or last in {
        "memoryHeadroom",
        "minDelta",
        "percentile",
        "pThreshold",
    }:
        return 'expected a decimal number such as "0.5" or "1e-4"'
    hints = {
        "entrypoint": "expected module:attribute, e.g. trial_runner.tasks.digits:DigitsMLP",
        "timeout": "expected a duration such as 90m, 6h or 1h30m",
        "name": "expected a lowercase DNS label (a-z, 0-9, '-') or, for parameters, an "
        "identifier (letters, digits, '_')",
        "group": "expected a CamelCase word (letters and digits)",
        "peakMemory": "expected a quantity such as 512Mi or 20Gi",
        "memory": "expected a quantity such as 512Mi or 20Gi",
        "cpu": "expected a CPU quantity such as 500m or 2",
        "batchSizeParameter": "expected a parameter name",
    }
    return hints.get(last, "does not match the accepted format")


# --------------------------------------------------------------------------- parsing helpers


def parse_number(value: int | str) -> float:
    return float(value)


_DURATION = re.compile(DURATION_PATTERN)


def parse_duration(value: str) -> float:
    """Seconds in a duration such as ``1h30m``."""
    match = _DURATION.match(value)
    if not match or not value:
        raise ValueError(f"not a duration: {value!r}")
    hours, minutes, seconds = (int(g[:-1]) if g else 0 for g in match.groups())
    return float(hours * 3600 + minutes * 60 + seconds)


_QUANTITY_FACTORS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def parse_quantity(value: str) -> int:
    """Bytes in a Kubernetes memory quantity such as ``512Mi``."""
    match = re.match(QUANTITY_PATTERN, value)
    if not match:
        raise ValueError(f"not a quantity: {value!r}")
    return int(float(match.group(1)) * _QUANTITY_FACTORS[match.group(3)])


# --------------------------------------------------------------------------- semantic rules


def semantic_errors(spec: StudySpec, prefix: str = "spec") -> list[FieldError]:
    """Every cross-field problem of a structurally valid spec (mirrored by the CRD's CEL)."""
    errors: list[FieldError] = []

    def err(path: str, message: str) -> None:
        errors.append(FieldError(f"{prefix}.{path}", message))

    names: dict[str, int] = {}
    for i, p in enumerate(spec.search_space):
        at = f"searchSpace[{i}]"
        if p.name in names:
            err(
                f"{at}.name",
                f"duplicate parameter name {p.name!r} (also searchSpace[{names[p.name]}])",
            )
        names.setdefault(p.name, i)
        errors.extend(_parameter_errors(p, f"{prefix}.{at}"))

    groups = {p.group for p in spec.search_space}
    if spec.stages:
        searched: set[str] = set()
        for i, stage in enumerate(spec.stages):
            for j, group in enumerate(stage.groups):
                if group not in groups:
                    err(
                        f"stages[{i}].groups[{j}]",
                        f"unknown group {group!r} "
                        f"(groups in searchSpace: {', '.join(sorted(groups))})",
                    )
            if stage.trials is None and i != len(spec.stages) - 1:
                err(f"stages[{i}].trials", "required on every stage but the last")
            searched.update(stage.groups)
        stage_names = [s.name for s in spec.stages if s.name]
        if len(stage_names) != len(set(stage_names)):
            err("stages", "stage names must be unique")
        for i, p in enumerate(spec.search_space):
            if p.group not in searched:
                err(
                    f"searchSpace[{i}].group",
                    f"group {p.group!r} is not searched by any stage",
                )
        first = set(spec.stages[0].groups)
        for i, p in enumerate(spec.search_space):
            if p.group not in first and p.default is None:
                err(
                    f"searchSpace[{i}].default",
                    f"required: group {p.group!r} is not searched in the first stage, so "
                    "the parameter needs a value until then",
                )
        fixed = sum(s.trials or 0 for s in spec.stages)
        needed = fixed + (1 if spec.stages[-1].trials is None else 0)
        if needed > spec.budget.max_trials:
            err(
                "budget.maxTrials",
                f"must cover the stages' trials ({needed} needed, got {spec.budget.max_trials})",
            )

    bs = spec.training.batch_size_parameter
    if bs in names:
        p = spec.search_space[names[bs]]
        if p.type == "Float":
            err(
                f"searchSpace[{names[bs]}].type",
                f"{bs!r} is the batch size: must be Int or Categorical",
            )
        if (
            p.type == "Categorical"
            and p.choices
            and not all(isinstance(c, int) and c > 0 for c in p.choices)
        ):
            err(f"searchSpace[{names[bs]}].choices", "batch sizes must be positive integers")

    if spec.training.epoch_schedule:
        starts = [e.from_trial for e in spec.training.epoch_schedule]
        if starts != sorted(set(starts)):
            err("training.epochSchedule", "fromTrial must strictly increase")
        if starts and starts[0] != 0:
            err(
                "training.epochSchedule[0].fromTrial", "must be 0 so every trial has an epoch count"
            )

    headroom = parse_number(spec.resources.memory_headroom)
    if not 0 <= headroom <= 4:
        err(
            "resources.memoryHeadroom",
            f"must be between 0 and 4 (got {spec.resources.memory_headroom})",
        )

    pr = spec.pruner
    if pr.percentile is not None and not 0 <= parse_number(pr.percentile) <= 100:
        err("pruner.percentile", f"must be between 0 and 100 (got {pr.percentile})")
    if pr.p_threshold is not None and not 0 < parse_number(pr.p_threshold) <= 1:
        err("pruner.pThreshold", f"must be in (0, 1] (got {pr.p_threshold})")
    if pr.type == "Percentile" and pr.percentile is None:
        err("pruner.percentile", "required when type is Percentile")
    if pr.min_resource and pr.max_resource and pr.min_resource >= pr.max_resource:
        err("pruner.maxResource", f"must be above minResource (got {pr.max_resource})")
    if pr.min_delta is not None and pr.patience is None:
        err("pruner.minDelta", "only used with patience: set pruner.patience too")
    if spec.sampler.type == "CMAES" and any(p.type == "Categorical" for p in spec.search_space):
        # CMA-ES samples categorical parameters independently at random; say so instead of
        # letting users believe they are optimised jointly.
        pass
    return errors


def _parameter_errors(p: Parameter, at: str) -> list[FieldError]:
    errors: list[FieldError] = []

    def err(field: str, message: str) -> None:
        errors.append(FieldError(f"{at}.{field}", message))

    if p.type == "Categorical":
        if not p.choices:
            err("choices", "required and non-empty for a Categorical parameter")
        elif len(set(map(repr, p.choices))) != len(p.choices):
            err("choices", "must not repeat a value")
        for field in ("low", "high", "step"):
            if getattr(p, field) is not None:
                err(field, "not accepted for a Categorical parameter (use choices)")
        if p.scale != "Linear":
            err("scale", "not accepted for a Categorical parameter")
        if p.default is not None and p.choices and p.default not in p.choices:
            err("default", f"must be one of the choices (got {p.default!r})")
        return errors

    if p.choices is not None:
        err("choices", f"not accepted for a {p.type} parameter (use low and high)")
    bounds_ok = True
    for field in ("low", "high"):
        value = getattr(p, field)
        if value is None:
            err(field, f"required for a {p.type} parameter")
            bounds_ok = False
        elif p.type == "Int" and not _is_integral(value):
            err(field, f"must be an integer for an Int parameter (got {value!r})")
            bounds_ok = False
    if not bounds_ok:
        return errors
    assert p.low is not None and p.high is not None
    low, high = parse_number(p.low), parse_number(p.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        err("low", "bounds must be finite")
        return errors
    if low >= high:
        err("low", f"must be below high (got low={p.low}, high={p.high})")
    if p.scale == "Log" and low <= 0:
        err("low", f"must be above 0 with scale Log (got {p.low})")
    if p.step is not None:
        step = parse_number(p.step)
        if step <= 0:
            err("step", f"must be above 0 (got {p.step})")
        elif p.scale == "Log":
            err("step", "not accepted with scale Log")
        elif p.type == "Int" and not _is_integral(p.step):
            err("step", f"must be an integer for an Int parameter (got {p.step!r})")
    if p.default is not None:
        default = parse_number(p.default) if _is_number(p.default) else None
        if default is None:
            err("default", f"must be a number for a {p.type} parameter (got {p.default!r})")
        elif not low <= default <= high:
            err("default", f"must lie within [low, high] (got {p.default})")
        elif p.type == "Int" and not _is_integral(p.default):
            err("default", f"must be an integer for an Int parameter (got {p.default!r})")
    return errors


def _is_number(value: int | str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _is_integral(value: int | str) -> bool:
    if isinstance(value, int):
        return True
    try:
        return float(value).is_integer() and re.fullmatch(r"[-+]?[0-9]+", value) is not None
    except ValueError:
        return False


# --------------------------------------------------------------------------- loading


def validate_spec_mapping(raw: Any, prefix: str = "spec") -> StudySpec:
    """Validate a bare ``spec`` mapping (as the operator reads it from the API server)."""
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as exc:
        errors = _pydantic_errors(exc)
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
        raise SpecError(_pydantic_errors(exc), source) from None
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
