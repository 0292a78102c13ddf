"""The study spec: valid files load; every invalid one names its field and what is accepted."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from kubetune_api.spec import (
    Objective,
    SpecError,
    dump_yaml,
    is_better,
    load_study,
    parse_duration,
    parse_quantity,
    study_from_mapping,
)
from tests.harness.studies import spec_model, study_document


def base() -> dict[str, Any]:
    return study_document()


def with_change(path: str, value: Any) -> dict[str, Any]:
    """A copy of the base document with one field set (``DELETE`` removes it)."""
    doc = copy.deepcopy(base())
    parts = path.replace("]", "").replace("[", ".").split(".")
    target: Any = doc
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target.setdefault(part, {})
    last = parts[-1]
    key: Any = int(last) if last.isdigit() else last
    if value == "DELETE":
        del target[key]
    else:
        target[key] = value
    return doc


def test_base_document_is_valid() -> None:
    study = study_from_mapping(base())
    assert study.name == "digits"
    assert study.spec.search_space[0].scale == "Log"
    assert study.spec.training.folds == 1  # defaults fill in
    assert study.spec.budget.max_consecutive_failed_trials == 10  # the failure breaker
    assert study.spec.task.config == {"a": 1}


INVALID: list[tuple[str, Any, str, str]] = [
    # (field to change, new value, expected path in the message, expected words)
    ("apiVersion", "kubetune.dev/v1", "apiVersion", "kubetune.dev/v1alpha1"),
    ("kind", "Study", "kind", "HPOStudy"),
    ("metadata.name", "Digits_MLP", "metadata.name", "DNS label"),
    (
        "spec.objective.direction",
        "Maximise",
        "spec.objective.direction",
        "'Maximize' or 'Minimize'",
    ),
    ("spec.objective.metric", "DELETE", "spec.objective.metric", "required"),
    ("spec.objective.metrc", "x", "spec.objective.metrc", "accepted: direction, metric"),
    (
        "spec.task.entrypoint",
        "trial_runner.tasks.digits",
        "spec.task.entrypoint",
        "module:attribute",
    ),
    ("spec.searchSpace[0].low", "1", "spec.searchSpace[0].low", "must be below high"),
    ("spec.searchSpace[0].low", "abc", "spec.searchSpace[0].low", "decimal number"),
    ("spec.searchSpace[0].low", "0", "spec.searchSpace[0].low", "above 0 with scale Log"),
    (
        "spec.searchSpace[0].type",
        "Double",
        "spec.searchSpace[0].type",
        "'Float', 'Int' or 'Categorical'",
    ),
    ("spec.searchSpace[0].scale", "Log10", "spec.searchSpace[0].scale", "'Linear' or 'Log'"),
    ("spec.searchSpace[0].high", "DELETE", "spec.searchSpace[0].high", "required for a Float"),
    ("spec.searchSpace[0].step", "0.01", "spec.searchSpace[0].step", "not accepted with scale Log"),
    ("spec.searchSpace[1].choices", [], "spec.searchSpace[1].choices", "non-empty"),
    ("spec.searchSpace[1].choices", [32, 32], "spec.searchSpace[1].choices", "must not repeat"),
    ("spec.searchSpace[1].low", "1", "spec.searchSpace[1].low", "not accepted for a Categorical"),
    ("spec.searchSpace[1].name", "learning_rate", "spec.searchSpace[1].name", "duplicate"),
    ("spec.searchSpace[2].low", "1.5", "spec.searchSpace[2].low", "must be an integer"),
    ("spec.searchSpace[2].default", 500, "spec.searchSpace[2].default", "within [low, high]"),
    (
        "spec.searchSpace[2].default",
        "DELETE",
        "spec.searchSpace[2].default",
        "not searched in the first stage",
    ),
    ("spec.searchSpace[2].group", "model", "spec.searchSpace[2].group", "CamelCase"),
    ("spec.searchSpace[2].default", "lots", "spec.searchSpace[2].default", "must be a number"),
    ("spec.searchSpace[1].default", 48, "spec.searchSpace[1].default", "one of the choices"),
    (
        "spec.searchSpace[2].choices",
        [1, 2],
        "spec.searchSpace[2].choices",
        "not accepted for a Int",
    ),
    ("spec.searchSpace", [], "spec.searchSpace", "at least 1"),
    ("spec.stages[0].groups", ["Critcal"], "spec.stages[0].groups[0]", "unknown group 'Critcal'"),
    ("spec.stages[0].trials", "DELETE", "spec.stages[0].trials", "every stage but the last"),
    ("spec.stages[0].trials", 20, "spec.budget.maxTrials", "must cover the stages"),
    (
        "spec.stages",
        [{"groups": ["Critical"], "trials": 4}],
        "spec.searchSpace[2].group",
        "not searched by any stage",
    ),
    ("spec.budget.maxTrials", 0, "spec.budget.maxTrials", "greater than or equal to 1"),
    ("spec.budget.maxTrials", "10", "spec.budget.maxTrials", "valid integer"),
    (
        "spec.budget.maxConsecutiveFailedTrials",
        0,
        "spec.budget.maxConsecutiveFailedTrials",
        "greater than or equal to 1",
    ),
    ("spec.budget.timeout", "6 hours", "spec.budget.timeout", "duration such as"),
    ("spec.sampler", {"type": "Bayes"}, "spec.sampler.type", "'TPE'"),
    (
        "spec.pruner",
        {"type": "Percentile"},
        "spec.pruner.percentile",
        "required when type is Percentile",
    ),
    (
        "spec.pruner",
        {"type": "Hyperband", "minResource": 3, "maxResource": 2},
        "spec.pruner.maxResource",
        "above minResource",
    ),
    ("spec.pruner", {"type": "Median", "minDelta": "0.1"}, "spec.pruner.minDelta", "patience"),
    (
        "spec.training",
        {"precision": "BF32"},
        "spec.training.precision",
        "'Auto', 'BF16', 'FP16' or 'FP32'",
    ),
    ("spec.training", {"folds": 0}, "spec.training.folds", "greater than or equal to 1"),
    (
        "spec.training",
        {"epochSchedule": [{"fromTrial": 5, "epochs": 2}]},
        "spec.training.epochSchedule[0].fromTrial",
        "must be 0",
    ),
    (
        "spec.training",
        {"earlyStopping": {"patience": 2, "minDelta": "x"}},
        "spec.training.earlyStopping.minDelta",
        "decimal number",
    ),
    ("spec.training", {"epoch": 3}, "spec.training.epoch", "unknown field (accepted:"),
    (
        "spec.training",
        {"profile": {"trials": "EveryN"}},
        "spec.training.profile.every",
        "required when trials is EveryN",
    ),
    (
        "spec.training",
        {"profile": {"every": 5}},
        "spec.training.profile.every",
        "only used with trials: EveryN",
    ),
    (
        "spec.training",
        {"profile": {"trials": "EveryN", "every": 1}},
        "spec.training.profile.every",
        "greater than or equal to 2",
    ),
    (
        "spec.training",
        {"profile": {"trials": "Last"}},
        "spec.training.profile.trials",
        "'First' or 'EveryN'",
    ),
    (
        "spec.resources",
        {"parallelism": 0},
        "spec.resources.parallelism",
        "greater than or equal to 1",
    ),
    (
        "spec.resources",
        {"accelerator": "TPU"},
        "spec.resources.accelerator",
        "'Auto', 'GPU', 'MIG' or 'CPU'",
    ),
    ("spec.resources", {"memoryHeadroom": "5"}, "spec.resources.memoryHeadroom", "between 0 and 4"),
    ("spec.resources", {"peakMemory": "20 GB"}, "spec.resources.peakMemory", "quantity such as"),
    (
        "spec.resources",
        {"trialsPerDevice": "Sometimes"},
        "spec.resources.trialsPerDevice",
        "expected Auto or a number of runner processes per device, 1 to 16",
    ),
    (
        "spec.resources",
        {"trialsPerDevice": 0},
        "spec.resources.trialsPerDevice",
        "greater than or equal to 1",
    ),
    (
        "spec.resources",
        {"trialsPerDevice": 17},
        "spec.resources.trialsPerDevice",
        "less than or equal to 16",
    ),
    (
        "spec.resources",
        {"queueName": "Team_A"},
        "spec.resources.queueName",
        "name of a Kueue LocalQueue",
    ),
    (
        "spec.storage",
        {"secretRef": {"name": "Bad_Name"}},
        "spec.storage.secretRef.name",
        "DNS label",
    ),
    ("spec.suspend", "yes", "spec.suspend", "valid boolean"),
    ("spec.searchSpace[1].choices", [16, "x"], "spec.searchSpace[1].choices", "positive integers"),
]


@pytest.mark.parametrize(
    ("field", "value", "path", "words"), INVALID, ids=[f"{c[0]}={c[1]!r}" for c in INVALID]
)
def test_invalid_spec_names_field_and_accepted_values(
    field: str, value: Any, path: str, words: str
) -> None:
    with pytest.raises(SpecError) as info:
        study_from_mapping(with_change(field, value))
    messages = [str(e) for e in info.value.errors]
    matching = [m for m in messages if m.startswith(f"{path}:")]
    assert matching, f"no error at {path}: {messages}"
    assert any(words in m for m in matching), messages


def test_every_error_is_reported_at_once() -> None:
    doc = with_change("spec.objective.direction", "Up")
    doc["spec"]["budget"]["maxTrials"] = -1
    with pytest.raises(SpecError) as info:
        study_from_mapping(doc)
    paths = {e.path for e in info.value.errors}
    assert {"spec.objective.direction", "spec.budget.maxTrials"} <= paths


def test_load_study_reports_yaml_and_file_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML at line"):
        load_study(broken)
    with pytest.raises(SpecError, match="cannot read file"):
        load_study(tmp_path / "missing.yaml")
    two = tmp_path / "two.yaml"
    two.write_text(dump_yaml(base()) + "---\n" + dump_yaml(base()))
    with pytest.raises(SpecError, match="exactly one HPOStudy"):
        load_study(two)


def test_multi_document_file_picks_the_study(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pg"}}
    path.write_text(dump_yaml(secret) + "---\n" + dump_yaml(base()))
    assert load_study(path).name == "digits"


def test_duration_and_quantity_parsing() -> None:
    assert parse_duration("1h30m") == 5400
    assert parse_duration("45s") == 45
    assert parse_quantity("512Mi") == 512 * 2**20
    assert parse_quantity("2G") == 2 * 10**9
    assert parse_quantity("16384Ki") == 16 * 2**20
    assert parse_quantity("1.5Gi") == 3 * 2**29
    assert parse_quantity("100m") == 1  # a fraction of a byte rounds up
    with pytest.raises(ValueError, match="not a quantity"):
        parse_quantity("2 GB")


def test_numbers_are_parsed_once_by_the_model() -> None:
    spec = spec_model(
        budget={"maxTrials": 10, "timeout": "1h30m"},
        training={"earlyStopping": {"patience": 2, "minDelta": "1e-3"}},
        pruner={"type": "Percentile", "percentile": "25", "patience": 1, "minDelta": "0.5"},
        resources={"memoryHeadroom": "0.25", "peakMemory": "12Gi", "memory": "512Mi"},
    )
    assert spec.budget.timeout_seconds == 5400
    assert spec.training.early_stopping is not None
    assert spec.training.early_stopping.min_delta_value == 1e-3
    assert (spec.pruner.percentile_value, spec.pruner.min_delta_value) == (25.0, 0.5)
    assert spec.pruner.p_threshold_value is None
    assert spec.resources.headroom_fraction == 0.25
    assert spec.resources.peak_memory_bytes == 12 * 2**30
    assert spec.resources.memory_bytes == 512 * 2**20
    low, high = spec.search_space[0].low_value, spec.search_space[0].high_value
    assert (low, high) == (1e-4, 1e-1)
    assert spec.search_space[2].typed("64") == 64 and spec.search_space[0].typed("0.5") == 0.5


@pytest.mark.parametrize(
    ("direction", "a", "b", "margin", "better"),
    [
        ("Maximize", 0.9, 0.8, 0.0, True),
        ("Maximize", 0.8, 0.9, 0.0, False),
        ("Maximize", 0.85, 0.8, 0.1, False),  # not by more than the margin
        ("Minimize", 0.1, 0.2, 0.0, True),
        ("Minimize", 0.2, 0.1, 0.0, False),
        ("Minimize", 0.15, 0.2, 0.1, False),
        ("Maximize", 0.8, 0.8, 0.0, False),  # a tie is not better
    ],
)
def test_one_rule_says_which_score_is_better(
    direction: str, a: float, b: float, margin: float, better: bool
) -> None:
    objective = Objective(metric="accuracy", direction=direction)  # type: ignore[arg-type]
    assert objective.better(a, b, margin) is better
    assert is_better(direction, a, b, margin) is better
    best = max(a, b) if direction == "Maximize" else min(a, b)
    assert sorted([b, a], key=objective.best_first)[0] == best


def test_categorical_string_default_for_a_later_stage() -> None:
    doc = base()
    doc["spec"]["searchSpace"].append(
        {
            "name": "activation",
            "type": "Categorical",
            "choices": ["relu", "gelu"],
            "group": "Model",
            "default": "gelu",
        }
    )
    study = study_from_mapping(doc)
    assert study.spec.search_space[3].default == "gelu"
