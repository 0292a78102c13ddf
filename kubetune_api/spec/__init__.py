"""The HPOStudy spec: one typed model shared by the operator, the runner and the local CLI.

The same YAML a user gives to ``kubectl apply`` is loaded here:

* :mod:`._models`: the pydantic models (structure, enums, bounds; strict), by topic in
  :mod:`._base`, :mod:`._search`, :mod:`._training`, :mod:`._runner`, :mod:`._budget` and
  :mod:`._warm_start`, each exposing its numbers parsed once, :meth:`Objective.better` and
  :func:`best_first_key` (the order of trials over several objectives);
* :mod:`._rules`: :func:`semantic_errors`, rules that span fields (``low < high``, stage groups,
  defaults inside their range, ...), each reported with its field path;
* :mod:`._load`: loading a file, a text, a whole document or a bare spec, every problem at
  once as a :class:`SpecError` (bounded in length), each spec taken as the API server stores
  it (:func:`as_api_server_stores`);
* :mod:`._yaml`: YAML read and written as kubectl reads it (:func:`load_yaml_documents`,
  :func:`dump_yaml`), so ``low: 1e-4`` is a number for every reader;
* :mod:`._parse`: numbers, durations and Kubernetes quantities.

The CRD's OpenAPI schema is generated from these models (``kubetune_api.crd``) and its CEL rules
mirror :func:`semantic_errors`, so a spec that validates locally validates at apply time.
"""

from __future__ import annotations

from kubetune_api.spec._base import (
    CONSTRAINED_SAMPLERS,
    DEFAULT_MAX_CONSECUTIVE_FAILED_TRIALS,
    FREE_FORM_FIELDS,
    MAX_CONSTRAINTS,
    MAX_OBJECTIVES,
    MAX_PARAMETERS,
    MAX_SEED,
    MAX_STAGES,
    MAX_STUDY_NAME,
    MAX_TRIALS_PER_DEVICE,
    MAX_WARM_START_POINTS,
    MULTI_OBJECTIVE_SAMPLERS,
    NAME_PATTERN,
    NUMBER_PATTERN,
    QUANTITY_PATTERN,
    QUEUE_NAME_PATTERN,
    best_first,
    best_first_key,
    is_better,
)
from kubetune_api.spec._budget import Budget, SecretKeyRef, Storage
from kubetune_api.spec._errors import MAX_SHOWN_ERRORS, FieldError, SpecError, format_path
from kubetune_api.spec._load import (
    CLIENT_SIDE_APPLY_BYTES,
    MAX_DOCUMENT_BYTES,
    as_api_server_stores,
    load_study,
    study_from_mapping,
    study_from_text,
    validate_spec_mapping,
)
from kubetune_api.spec._metadata import ObjectMeta
from kubetune_api.spec._models import HPOStudy, StudySpec
from kubetune_api.spec._parse import parse_duration, parse_number, parse_quantity
from kubetune_api.spec._rules import point_value_error, semantic_errors
from kubetune_api.spec._runner import (
    SHARED_MEMORY_BASE,
    SHARED_MEMORY_PER_WORKER,
    Resources,
    Runner,
)
from kubetune_api.spec._sampler_choice import AUTO_GP_BUDGET, SamplerChoice, choose_sampler
from kubetune_api.spec._search import (
    Condition,
    Constraint,
    Objective,
    Parameter,
    Pruner,
    Sampler,
    Stage,
)
from kubetune_api.spec._template import (
    MAX_MOUNT_PATH,
    MAX_TEMPLATE_ITEMS,
    MAX_VOLUME_NAME,
    OWNED_MOUNT_PATTERN,
    QUANTITY_VALUE_PATTERN,
    is_owned,
    template_json_schema,
)
from kubetune_api.spec._training import (
    Checkpoint,
    EarlyStopping,
    EpochScheduleEntry,
    Profile,
    TaskSpec,
    Training,
    device_precision,
)
from kubetune_api.spec._warm_start import FromStudy, ParameterValue, WarmStart, WarmStartPoint
from kubetune_api.spec._yaml import dump_yaml, load_yaml_documents

__all__ = [
    "AUTO_GP_BUDGET",
    "CLIENT_SIDE_APPLY_BYTES",
    "CONSTRAINED_SAMPLERS",
    "DEFAULT_MAX_CONSECUTIVE_FAILED_TRIALS",
    "FREE_FORM_FIELDS",
    "MAX_CONSTRAINTS",
    "MAX_DOCUMENT_BYTES",
    "MAX_MOUNT_PATH",
    "MAX_OBJECTIVES",
    "MAX_PARAMETERS",
    "MAX_SEED",
    "MAX_SHOWN_ERRORS",
    "MAX_STAGES",
    "MAX_STUDY_NAME",
    "MAX_TEMPLATE_ITEMS",
    "MAX_TRIALS_PER_DEVICE",
    "MAX_VOLUME_NAME",
    "MAX_WARM_START_POINTS",
    "MULTI_OBJECTIVE_SAMPLERS",
    "NAME_PATTERN",
    "NUMBER_PATTERN",
    "OWNED_MOUNT_PATTERN",
    "QUANTITY_PATTERN",
    "QUANTITY_VALUE_PATTERN",
    "QUEUE_NAME_PATTERN",
    "SHARED_MEMORY_BASE",
    "SHARED_MEMORY_PER_WORKER",
    "Budget",
    "Checkpoint",
    "Condition",
    "Constraint",
    "EarlyStopping",
    "EpochScheduleEntry",
    "FieldError",
    "FromStudy",
    "HPOStudy",
    "ObjectMeta",
    "Objective",
    "Parameter",
    "ParameterValue",
    "Profile",
    "Pruner",
    "Resources",
    "Runner",
    "Sampler",
    "SamplerChoice",
    "SecretKeyRef",
    "SpecError",
    "Stage",
    "Storage",
    "StudySpec",
    "TaskSpec",
    "Training",
    "WarmStart",
    "WarmStartPoint",
    "as_api_server_stores",
    "best_first",
    "best_first_key",
    "choose_sampler",
    "device_precision",
    "dump_yaml",
    "format_path",
    "is_better",
    "is_owned",
    "load_study",
    "load_yaml_documents",
    "parse_duration",
    "parse_number",
    "parse_quantity",
    "point_value_error",
    "semantic_errors",
    "study_from_mapping",
    "study_from_text",
    "template_json_schema",
    "validate_spec_mapping",
]
