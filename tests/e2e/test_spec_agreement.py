"""One verdict: ``kubetune validate`` and the real API server accept and reject the same specs.

Hypothesis generates specs from valid ones with mutations a user (or a typo) makes: wrong
types, numbers out of range or of the wrong kind, unknown fields, bad enum values, lists and
strings over their limits, non-ASCII text, nulls, deleted fields. Each spec goes to
``validate_spec_mapping`` (what ``kubetune validate``, the runners and the operator run) and,
as a server-side dry run with strict field validation, to the kube-apiserver with the
generated CRD installed (its OpenAPI schema and CEL rules): both must accept it, or both
reject it. Every local error must name a field under ``spec`` and stay short.

The pod template (``spec.runner.template``) is in the generated specs too: the Kubernetes API's
own objects, typos in them, kubetune's fields and names, wrong types and sizes.

The two documented differences: the API server does not check a warm-start point's *values*
against their parameter (a CEL rule over every value of every point exceeds its cost budget;
docs/spec.md says so), and it takes a whole float (``30.0``) for an integer of the pod template
(number-kind rules over the Kubernetes API's objects exceed the same budget); the model
refuses both. A spec the server accepts and the model rejects only there is such a
difference, and nothing else is allowed.

The same goes for YAML: kubetune reads a file as kubectl does (``kubetune_api.spec._yaml``),
checked here against the real kubectl on generated scalars and keys.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes.client.exceptions import ApiException

from kubetune_api.contract import API_VERSION, GROUP, KIND, PLURAL, VERSION
from kubetune_api.spec import (
    MAX_SHOWN_ERRORS,
    MAX_TEMPLATE_ITEMS,
    SpecError,
    as_api_server_stores,
    load_yaml_documents,
    study_from_mapping,
    validate_spec_mapping,
)
from kubetune_api.spec._errors import MAX_MESSAGE, MAX_PATH
from tests.harness.controlplane import ControlPlane
from tests.harness.operator_fixtures import install_crd
from tests.harness.studies import study_document

pytestmark = pytest.mark.e2e

k8s: Any = kubernetes

#: Examples per run: a few hundred in CI, each one dry run against the API server.
EXAMPLES = 400

# --------------------------------------------------------------------------- valid specs

_SIMPLE = study_document()["spec"]

_SEVERAL: dict[str, Any] = {
    "objectives": [
        {"metric": "accuracy", "direction": "Maximize"},
        {"metric": "parameters", "direction": "Minimize"},
    ],
    "task": {"entrypoint": "trial_runner.tasks.digits:DigitsMLP", "image": "kubetune:1"},
    "searchSpace": [
        {"name": "learning_rate", "type": "Float", "low": "1e-3", "high": "3e-2", "scale": "Log"},
        {"name": "hidden_size", "type": "Int", "low": 8, "high": 256, "step": 8},
        {"name": "batch_size", "type": "Categorical", "choices": [16, 32, 64]},
    ],
    "budget": {"maxTrials": 20, "timeout": "2h"},
    "sampler": {"type": "NSGAII", "seed": 7, "populationSize": 10},
    "warmStart": {
        "points": [
            {
                "params": [
                    {"name": "learning_rate", "value": "5e-3"},
                    {"name": "batch_size", "value": 32},
                ]
            }
        ]
    },
}

_EVERYTHING: dict[str, Any] = {
    "objective": {"metric": "loss", "direction": "Minimize"},
    "task": {"entrypoint": "pkg.mod:Task", "config": {"layers": [1, 2.5, None], "x": {"y": "z"}}},
    "searchSpace": [
        {"name": "lr", "type": "Float", "low": "1e-5", "high": "1", "scale": "Log", "group": "Opt"},
        {"name": "wd", "type": "Float", "low": 0, "high": "0.1", "step": "0.01", "default": "0"},
        {"name": "act", "type": "Categorical", "choices": ["relu", "gelu"], "default": "gelu"},
        {"name": "width", "type": "Int", "low": 16, "high": 64, "group": "Opt", "default": 32},
    ],
    "stages": [
        {"name": "first", "groups": ["Opt"], "trials": 5},
        {"name": "second", "groups": ["Opt", "Default"]},
    ],
    "budget": {"maxTrials": 12, "maxFailedTrials": 3, "maxConsecutiveFailedTrials": 4},
    "sampler": {"type": "TPE", "seed": 0, "nStartupTrials": 2, "constantLiar": False},
    "pruner": {
        "type": "Hyperband",
        "minResource": 1,
        "maxResource": 9,
        "reductionFactor": 3,
        "patience": 2,
        "minDelta": "1e-3",
    },
    "training": {
        "epochs": 5,
        "epochSchedule": [{"fromTrial": 0, "epochs": 2}, {"fromTrial": 3, "epochs": 6}],
        "folds": 3,
        "reportEvery": "Epoch",
        "earlyStopping": {"patience": 2, "minDelta": "0.001"},
        "precision": "BF16",
        "effectiveBatchSize": 64,
        "batchSizeParameter": "bs",
        "maxMicroBatch": 16,
        "dataLoaderWorkers": 2,
        "checkpoint": {"directory": "/tmp/best"},
    },
    "resources": {
        "accelerator": "CPU",
        "parallelism": 3,
        "memoryHeadroom": "0.25",
        "peakMemory": "2Gi",
        "cpu": "500m",
        "memory": "1Gi",
    },
    "storage": {"secretRef": {"name": "pg", "key": "url"}, "deletionPolicy": "Delete"},
    "warmStart": {"fromStudy": {"studyName": "earlier", "mode": "Reevaluate", "topK": 2}},
    "suspend": False,
}

#: A team's own study: a pod template of every kind of field users give (the Kubernetes API's
#: own objects inside), so mutations reach typos, kubetune's fields and wrong types in it.
_TEMPLATED: dict[str, Any] = {
    **copy.deepcopy(_SIMPLE),
    "training": {"dataLoaderWorkers": 2},
    "runner": {
        "sharedMemory": "1Gi",
        "template": {
            "metadata": {"labels": {"team": "vision"}, "annotations": {"owner": "ml"}},
            "spec": {
                "volumes": [
                    {"name": "data", "persistentVolumeClaim": {"claimName": "d", "readOnly": True}},
                    {"name": "code", "configMap": {"name": "task", "defaultMode": 420}},
                ],
                "initContainers": [
                    {"name": "fetch", "image": "busybox:1", "command": ["true"], "args": ["x"]}
                ],
                "nodeSelector": {"pool": "gpu"},
                "tolerations": [
                    {"key": "team", "operator": "Equal", "value": "a", "tolerationSeconds": 30}
                ],
                "affinity": {
                    "nodeAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [
                            {
                                "weight": 10,
                                "preference": {
                                    "matchExpressions": [
                                        {"key": "zone", "operator": "In", "values": ["a", "b"]}
                                    ]
                                },
                            }
                        ]
                    }
                },
                "topologySpreadConstraints": [
                    {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}
                ],
                "imagePullSecrets": [{"name": "registry"}],
                "serviceAccountName": "trainer",
                "priorityClassName": "research",
                "securityContext": {"fsGroup": 2000, "supplementalGroups": [3000]},
                "containers": [
                    {
                        "name": "runner",
                        "env": [
                            {"name": "DATA_DIR", "value": "/data"},
                            {"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "t"}}},
                        ],
                        "envFrom": [{"secretRef": {"name": "wandb"}, "prefix": "W_"}],
                        "volumeMounts": [
                            {"name": "data", "mountPath": "/data", "readOnly": True},
                            {"name": "code", "mountPath": "/opt/task"},
                        ],
                        "resources": {"limits": {"ephemeral-storage": "10Gi", "example.com/x": 1}},
                    }
                ],
            },
        },
    },
}

#: Conditional parameters (chained: width_3 depends on width_2, itself conditional) and
#: constraints.
_CONDITIONAL: dict[str, Any] = {
    "objective": {"metric": "accuracy"},
    "task": {"entrypoint": "trial_runner.tasks.digits:DigitsMLP"},
    "searchSpace": [
        {"name": "optimizer", "type": "Categorical", "choices": ["SGD", "Adam", 3]},
        {
            "name": "momentum",
            "type": "Float",
            "low": "0",
            "high": "0.99",
            "when": {"parameter": "optimizer", "in": ["SGD"]},
        },
        {"name": "layers", "type": "Int", "low": 1, "high": 3},
        {
            "name": "width_2",
            "type": "Int",
            "low": 8,
            "high": 64,
            "step": 8,
            "when": {"parameter": "layers", "in": [2, "3"]},
        },
        {
            "name": "width_3",
            "type": "Int",
            "low": 8,
            "high": 64,
            "group": "Wide",
            "default": 8,
            "when": {"parameter": "width_2", "in": [16, 64]},
        },
    ],
    "stages": [{"groups": ["Default"], "trials": 5}, {"groups": ["Wide"]}],
    "constraints": [
        {"metric": "parameters", "max": "50000"},
        {"metric": "latency_ms", "min": "0", "max": "5"},
    ],
    "budget": {"maxTrials": 20},
    "sampler": {"type": "TPE", "seed": 1},
}

VALID_SPECS = (_SIMPLE, _SEVERAL, _EVERYTHING, _TEMPLATED, _CONDITIONAL)

# --------------------------------------------------------------------------- mutations

#: Lengths at the limits of the spec's lists, and past them.
LIST_LIMITS = {
    "searchSpace": 64,
    "choices": 256,
    "stages": 16,
    "groups": 64,
    "objectives": 8,
    "points": 16,
    "params": 64,
    "epochSchedule": 64,
    "in": 256,
    "constraints": 16,
    **dict.fromkeys(
        [
            "volumes",
            "initContainers",
            "tolerations",
            "topologySpreadConstraints",
            "imagePullSecrets",
            "env",
            "envFrom",
            "volumeMounts",
            "supplementalGroups",
        ],
        MAX_TEMPLATE_ITEMS,
    ),
    "containers": 1,
}
STRING_LENGTHS = (0, 1, 47, 48, 49, 62, 63, 64, 65, 252, 253, 254, 400)


def words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


ENUM_VALUES = words(
    "runner Always OnRootMismatch Exists Equal NoSchedule KUBETUNE_STORAGE_URL cpu memory tmp "
    "dshm /tmp /dev/shm/ nvidia.com/gpu kubetune.dev/study "
    "Maximize Minimize Float Int Categorical Linear Log TPE Random CMAES GP QMC NSGAII NSGAIII "
    "Nop Median Percentile Hyperband SuccessiveHalving Wilcoxon Fold Epoch Auto BF16 FP16 FP32 "
    "GPU MIG CPU Retain Delete AddTrials Reevaluate Critical Model Default Opt maximize LOG tpe"
)
NUMBER_TEXT = (
    "",
    *words(
        "1e-4 0.5 1 -1 0 10 1e400 -1e400 abc 1. .5 +1 0x10 1_0 1e3 3.0 -0 1:30 nan inf Infinity "
        "0.0001 100 64 2Gi 500m 1h 90m 0s 0h0m 1h30m"
    ),
)
NUMBERS = (0, 1, -1, 2, 3, 5, 8, 63, 64, 100000, 100001, 2**31, 2**32 - 1, 2**32, 2**53, 2**63 - 1)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(NUMBERS),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from((0.5, 1.0, 1e-4, 2.0, -0.0, 1e20, 64.0, 2.5)),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(NUMBER_TEXT),
    st.sampled_from(ENUM_VALUES),
    st.text(max_size=12),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.sampled_from(("name", "type", "a", "groups")), scalars, max_size=2),
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value inside ``node`` (lists by index, mappings by key)."""
    if isinstance(node, dict):
        for key, item in node.items():
            yield (*prefix, key)
            yield from _paths(item, (*prefix, key))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield (*prefix, index)
            yield from _paths(item, (*prefix, index))


def _parent(spec: dict[str, Any], path: tuple[Any, ...]) -> Any:
    node: Any = spec
    for part in path[:-1]:
        node = node[part]
    return node


def _last_name(path: tuple[Any, ...]) -> str:
    return next((p for p in reversed(path) if isinstance(p, str)), "")


def _grown(items: list[Any], length: int) -> list[Any]:
    """``items`` repeated to ``length``, names and scalars kept distinct (lists of named items
    and sets refuse repeats, which is not what this mutation is after)."""
    out: list[Any] = []
    for i in range(length):
        item = copy.deepcopy(items[i % len(items)]) if items else f"V{i}"
        if isinstance(item, dict):
            for key in ("name", "metric"):
                if isinstance(item.get(key), str) and i >= len(items):
                    item[key] = f"{item[key]}_{i}"
        elif i >= len(items):
            item = f"V{i}" if isinstance(item, str) else i + 1000
        out.append(item)
    return out


def _shape(path: tuple[Any, ...]) -> tuple[Any, ...]:
    """A path with its list indexes left out: where in the spec's structure it points."""
    return tuple(p for p in path if isinstance(p, str))


#: Values each place of the valid specs holds: swapping them keeps many specs valid, so
#: acceptance is tested as well as rejection.
VALID_VALUES: dict[tuple[Any, ...], list[Any]] = {}
for _valid in VALID_SPECS:
    for _path in _paths(_valid):
        _value = _parent(_valid, _path)[_path[-1]]
        VALID_VALUES.setdefault(_shape(_path), []).append(copy.deepcopy(_value))


@st.composite
def mutated_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid spec with zero to three mutations."""
    spec = copy.deepcopy(draw(st.sampled_from(VALID_SPECS)))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        paths = list(_paths(spec))
        path = draw(st.sampled_from(paths))
        parent, key = _parent(spec, path), path[-1]
        kind = draw(
            st.sampled_from(
                words("swap swap set set delete unknown size text enum kind snake grid")
            )
        )
        if kind == "swap" and _shape(path) in VALID_VALUES:
            parent[key] = copy.deepcopy(draw(st.sampled_from(VALID_VALUES[_shape(path)])))
        elif kind in ("swap", "set"):
            parent[key] = draw(values)
        elif kind == "delete":
            del parent[key]
        elif kind == "unknown":
            target = parent[key] if isinstance(parent[key], dict) else parent
            if isinstance(target, dict):
                target[draw(st.text(min_size=1, max_size=16))] = draw(scalars)
        elif kind == "size":
            node = parent[key]
            if isinstance(node, list):
                limit = LIST_LIMITS.get(_last_name(path), 8)
                length = draw(st.sampled_from((0, 1, limit - 1, limit, limit + 1)))
                parent[key] = _grown(node, max(length, 0))
            else:
                parent[key] = "x" * draw(st.sampled_from(STRING_LENGTHS))
        elif kind == "kind":
            # The same number of the other kind, as a JSON client may send it (10 as 10.0).
            node = parent[key]
            if isinstance(node, bool) or not isinstance(node, int | float):
                parent[key] = draw(values)
            elif isinstance(node, int):
                parent[key] = float(node)
            elif node.is_integer():
                parent[key] = int(node)
        elif kind == "text":
            parent[key] = draw(st.text(min_size=1, max_size=70))
        elif kind == "snake":
            # A field spelt as Python spells it (maxTrials as max_trials).
            if isinstance(key, str) and isinstance(parent, dict) and key != _snake(key):
                parent[_snake(key)] = parent.pop(key)
        elif kind == "grid":
            # An Int parameter's step against its range and default: on the grid or off it.
            ints = [p for p in spec.get("searchSpace", []) if isinstance(p, dict)]
            ints = [p for p in ints if p.get("type") == "Int"]
            if ints:
                param = draw(st.sampled_from(ints))
                field = draw(st.sampled_from(("step", "high", "default")))
                param[field] = draw(st.sampled_from((2, 3, 8, 16, 24, 50, 63, 64, 256, "16", "20")))
        else:
            parent[key] = draw(st.sampled_from(ENUM_VALUES))
    return spec


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


# --------------------------------------------------------------------------- verdicts

WARM_START_VALUE = re.compile(r"^spec\.warmStart\.points\[\d+\]\.params\[\d+\]\.value$")


CONDITION_VALUE = re.compile(r"^spec\.searchSpace\[\d+\]\.when\.in(\[\d+\])?$")


def _documented_difference(error: Any) -> bool:
    """Where only kubetune may reject: a warm-start point's value or a condition's value
    (``when.in``) against its parameter, or a whole float (``30.0``) for an integer of the pod
    template (no CEL rules there: they would exceed the API server's cost budget; docs/spec.md
    says so)."""
    if WARM_START_VALUE.match(error.path) or CONDITION_VALUE.match(error.path):
        return True
    return error.path.startswith("spec.runner.template.") and "(got the number " in error.message


def local_verdict(spec: Any) -> SpecError | None:
    try:
        validate_spec_mapping(spec)
    except SpecError as error:
        return error
    return None


def server_verdict(api: Any, namespace: str, spec: Any) -> str | None:
    """``None`` when the API server accepts the study, else its message."""
    body = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": "agreement"},
        "spec": spec,
    }
    try:
        api.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            body,
            dry_run="All",
            field_validation="Strict",
        )
    except ApiException as error:
        if error.status is None or not 400 <= error.status < 500:
            raise
        return str(error.body)[:2000]
    return None


def assert_short_and_named(error: SpecError) -> None:
    for field in error.errors:
        assert field.path == "spec" or field.path.startswith(("spec.", "spec[")), field
        assert len(str(field)) <= MAX_PATH + MAX_MESSAGE + 2 and "\n" not in str(field), field
    rendered = error.render().splitlines()
    assert len(rendered) <= MAX_SHOWN_ERRORS + 2
    assert all(len(line) <= MAX_PATH + MAX_MESSAGE + 4 for line in rendered)


def assert_one_verdict(api: Any, namespace: str, spec: Any) -> bool:
    """Both judge ``spec`` alike; returns whether kubetune accepts it."""
    local = local_verdict(spec)
    server = server_verdict(api, namespace, spec)
    shown = json.dumps(spec, default=str)[:3000]
    if local is not None:
        assert_short_and_named(local)
    if server is None and local is not None:
        assert all(_documented_difference(e) for e in local.errors), (
            f"only kubetune rejects:\n{local.render()}\n{shown}"
        )
        return False
    assert (local is None) == (server is None), (
        f"only the API server rejects:\n{server}\n{shown}"
        if local is None
        else f"only kubetune rejects:\n{local.render()}\n{shown}"
    )
    return local is None


# --------------------------------------------------------------------------- whole documents

_LABEL_KEYS = (
    "team", "kubetune.dev/team", "a" * 63, "a" * 64, "bad key", "-x", "x/", "/x", "Example.com/x",
    "example.com/" + "a" * 63, "a" * 254 + "/x", "app.kubernetes.io/name",
)  # fmt: skip
_LABEL_VALUES = ("", "a", "a b", "-a", "a-", "a" * 63, "a" * 64, "v1.2_3", "ü")


@st.composite
def mutated_documents(draw: st.DrawFn, namespace: str) -> dict[str, Any]:
    """A valid HPOStudy document with what users carry around it: ``kubectl get -o yaml``'s
    metadata and status, fields spelt as Python spells them, unknown metadata fields, namespace,
    label and annotation keys and values as the API server checks them."""
    document: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": "agreement"},
        "spec": copy.deepcopy(draw(st.sampled_from(VALID_SPECS))),
    }
    meta = document["metadata"]
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        kind = draw(
            st.sampled_from(
                ("saved", "status", "snake", "unknown", "namespace", "label", "annotation")
            )
        )
        if kind == "saved":
            meta.update(
                uid="0b5e-uid", resourceVersion="12", generation=3,
                creationTimestamp="2026-01-02T03:04:05Z",
                managedFields=[{"manager": "kubectl", "operation": "Update"}],
            )  # fmt: skip
        elif kind == "status":
            document["status"] = {"trials": {"complete": 3}, "conditions": []}
        elif kind == "snake":
            key = draw(st.sampled_from(("apiVersion", "metadata.resourceVersion")))
            if key == "apiVersion" and "apiVersion" in document:
                document["api_version"] = document.pop("apiVersion")
            elif key != "apiVersion":
                meta["resource_version"] = "12"
        elif kind == "unknown":
            meta[draw(st.sampled_from(("team", "owner", "labelz", "Name")))] = "x"
        elif kind == "namespace":
            meta["namespace"] = draw(st.sampled_from((namespace, "Team_A", "a" * 64, "-x")))
        elif kind == "label":
            labels = meta.setdefault("labels", {})
            labels[draw(st.sampled_from(_LABEL_KEYS))] = draw(st.sampled_from(_LABEL_VALUES))
        else:
            annotations = meta.setdefault("annotations", {})
            size = draw(st.sampled_from((1, 1000, 262_100, 262_200)))
            annotations[draw(st.sampled_from(_LABEL_KEYS))] = "x" * size
    return document


def local_document_verdict(document: dict[str, Any]) -> SpecError | None:
    try:
        study_from_mapping(document)
    except SpecError as error:
        return error
    return None


def server_document_verdict(api: Any, namespace: str, document: dict[str, Any]) -> str | None:
    try:
        api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, document, dry_run="All", field_validation="Strict"
        )
    except ApiException as error:
        if error.status is None or not 400 <= error.status < 500:
            raise
        return str(error.body)[:2000]
    return None


@pytest.fixture
def study_api(control_plane: ControlPlane, namespace: str) -> Iterator[Any]:
    install_crd(control_plane)
    with control_plane.api_client() as client:
        yield k8s.client.CustomObjectsApi(client)


def test_every_valid_base_spec_is_accepted_by_both(study_api: Any, namespace: str) -> None:
    for spec in VALID_SPECS:
        assert local_verdict(spec) is None
        assert server_verdict(study_api, namespace, spec) is None


def test_local_validation_and_the_api_server_agree(study_api: Any, namespace: str) -> None:
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,  # the same examples on every run, none replayed from earlier ones
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(mutated_specs())
    def agree(spec: dict[str, Any]) -> None:
        verdicts.append(assert_one_verdict(study_api, namespace, spec))

    verdicts: list[bool] = []
    agree()
    # Both verdicts are tested, not just rejections of broken specs.
    accepted = sum(verdicts)
    print(f"{len(verdicts)} specs: {accepted} accepted, {len(verdicts) - accepted} rejected")
    assert accepted >= len(verdicts) // 10 and len(verdicts) - accepted >= len(verdicts) // 10


def test_whole_documents_get_one_verdict(study_api: Any, namespace: str) -> None:
    @settings(
        max_examples=EXAMPLES // 4,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(mutated_documents(namespace))
    def agree(document: dict[str, Any]) -> None:
        local = local_document_verdict(document)
        server = server_document_verdict(study_api, namespace, document)
        shown = json.dumps(document, default=str)[:1500]
        assert (local is None) == (server is None), (
            f"only the API server rejects:\n{server}\n{shown}"
            if local is None
            else f"only kubetune rejects:\n{local.render()}\n{shown}"
        )
        if local is not None:
            assert all("\n" not in str(e) for e in local.errors)
        verdicts.append(local is None)

    verdicts: list[bool] = []
    agree()
    accepted = sum(verdicts)
    print(f"{len(verdicts)} documents: {accepted} accepted, {len(verdicts) - accepted} rejected")
    assert accepted >= len(verdicts) // 10 and len(verdicts) - accepted >= len(verdicts) // 10


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda s: s["sampler"].update(seed=-1), "spec.sampler.seed"),
        (lambda s: s["sampler"].update(seed=2**32), "spec.sampler.seed"),
        (lambda s: s["budget"].update(timeout=""), "spec.budget.timeout"),
        (lambda s: s["budget"].update(timeout="0s"), "spec.budget.timeout"),
        (lambda s: s["searchSpace"][0].update(low=1e-4), "spec.searchSpace[0].low"),
        (lambda s: s["budget"].update(maxConsecutiveFailedTrials=0), "spec.budget"),
        (lambda s: s["budget"].update(max_trials=s["budget"].pop("maxTrials")), "spec.budget"),
        (lambda s: s["searchSpace"][3].update(step=16, high=60), "spec.searchSpace[3].step"),
        (lambda s: s["searchSpace"][3].update(step=16, default=20), "spec.searchSpace[3].default"),
    ],
    ids=[
        "negative-seed",
        "huge-seed",
        "empty-timeout",
        "zero-timeout",
        "float-low",
        "breaker-0",
        "snake-case",
        "step-off-grid",
        "default-off-grid",
    ],
)
def test_the_reported_cases_are_rejected_by_both(
    study_api: Any, namespace: str, change: Any, field: str
) -> None:
    spec = copy.deepcopy(_EVERYTHING)
    change(spec)
    local = local_verdict(spec)
    assert local is not None and any(e.path.startswith(field) for e in local.errors)
    server = server_verdict(study_api, namespace, spec)
    assert server is not None and field in server, server


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda s: s["searchSpace"][1]["when"].update(parameter="layers"), "spec.searchSpace"),
        (lambda s: s["searchSpace"][1]["when"].update(parameter="momentum"), "spec.searchSpace"),
        (lambda s: s["searchSpace"][3]["when"].update(parameter="nope"), "spec.searchSpace"),
        (
            lambda s: s["searchSpace"][4]["when"].update(parameter="momentum", **{"in": [1]}),
            "spec.searchSpace",
        ),
        (
            lambda s: (
                s["searchSpace"][3].update(name="batch_size")
                or s["searchSpace"][4]["when"].update(parameter="batch_size")
            ),
            "spec.searchSpace",
        ),
        (lambda s: s["constraints"][0].pop("max"), "spec.constraints[0]"),
        (lambda s: s["constraints"][1].update(min="9"), "spec.constraints[1].min"),
        (lambda s: s["sampler"].update(type="Random"), "spec.sampler.type"),
        (lambda s: s["sampler"].update(type="CMAES"), "spec.sampler.type"),
    ],
    ids=[
        "condition-after",
        "condition-on-itself",
        "condition-unknown",
        "condition-on-float",
        "conditional-batch-size",
        "constraint-unbounded",
        "constraint-min-above-max",
        "constraints-random",
        "constraints-cmaes",
    ],
)
def test_conditions_and_constraints_get_one_verdict(
    study_api: Any, namespace: str, change: Any, field: str
) -> None:
    spec = copy.deepcopy(_CONDITIONAL)
    change(spec)
    local = local_verdict(spec)
    assert local is not None and any(e.path.startswith(field) for e in local.errors), local
    server = server_verdict(study_api, namespace, spec)
    assert server is not None and field in server, server


@pytest.mark.parametrize(
    ("base", "pruner", "field"),
    [
        (_SEVERAL, {"type": "MOASHA", "minResource": 2, "reductionFactor": 4}, None),
        (_SEVERAL, {"type": "Hyperband"}, "spec.pruner.type"),
        (_SEVERAL, {"type": "MOASHA", "patience": 2}, "spec.pruner.patience"),
        (_SIMPLE, {"type": "MOASHA"}, "spec.pruner.type"),
    ],
    ids=["moasha-several", "hyperband-several", "moasha-patience", "moasha-one-objective"],
)
def test_the_multi_objective_pruner_gets_one_verdict(
    study_api: Any, namespace: str, base: dict[str, Any], pruner: dict[str, Any], field: str | None
) -> None:
    spec = {**copy.deepcopy(base), "pruner": pruner}
    local, server = local_verdict(spec), server_verdict(study_api, namespace, spec)
    if field is None:
        assert local is None and server is None, (local, server)
        return
    assert local is not None and any(e.path == field for e in local.errors), local
    assert server is not None and field in server, server


def test_a_misspelt_stage_group_is_one_server_error_naming_stage_and_group(
    study_api: Any, namespace: str
) -> None:
    spec = copy.deepcopy(_SIMPLE)
    spec["stages"] = [{"groups": ["Critical"], "trials": 2}, {"groups": ["Critical", "Modle"]}]
    server = server_verdict(study_api, namespace, spec)
    assert server is not None
    causes = json.loads(server)["details"]["causes"]
    assert [c["message"] for c in causes] == [
        "Invalid value: stages[1].groups: unknown group 'Modle' (not the group of any "
        "searchSpace parameter)"
    ], causes
    local = local_verdict(spec)
    assert local is not None and [e.path for e in local.errors] == ["spec.stages[1].groups[1]"]


def test_ten_thousand_parameters_are_one_short_error_for_both(
    study_api: Any, namespace: str
) -> None:
    spec = copy.deepcopy(_SIMPLE)
    spec["searchSpace"] = [dict(spec["searchSpace"][0], name=f"p{i}") for i in range(10_000)]
    local = local_verdict(spec)
    assert local is not None and len(local.render()) < 300
    server = server_verdict(study_api, namespace, spec)
    assert server is not None and "must have at most 64 items" in server and len(server) < 2000


# --------------------------------------------------------------------------- YAML as kubectl

_SCALAR_ALPHABET = "0123456789+-._eExXoObB:aAfFnNyYtT~"
scalar_texts = st.one_of(
    st.text(alphabet=_SCALAR_ALPHABET, min_size=1, max_size=10),
    st.sampled_from(
        words(
            "1e-4 1.5e3 .5 +.5 1. 1_000 0x1F 0o17 017 08 0b101 -0b101 99999999999999999999 "
            "18446744073709551615 +18446744073709551615 1e400 1:30 2024-01-01 y N Off yes ~ null "
            "= 12e -.inf +.nan .NaN 0.1_2 1__0 _1 -0 -0.0 1e6 123456.0 1234567.0 0.00001 3.4e38 "
            "3.5e38 1e-50 0x 0o +0x10 -"
        )
    ),
)


def _plain_scalar(text: str) -> bool:
    """Whether ``text`` is one plain scalar as a mapping value and as a key (YAML's grammar,
    the same for both parsers; what the text *means* is what is compared)."""
    try:
        value = yaml.compose(f"v: {text}\n").value[0][1]
        key = yaml.compose(f"{text}: 0\n").value[0][0]
    except yaml.YAMLError:
        return False
    return all(
        isinstance(node, yaml.ScalarNode) and node.style is None and node.value == text
        for node in (value, key)
    )


def _document(texts: list[str]) -> list[str]:
    lines = []
    for i, text in enumerate(texts):
        lines += [f"v{i}: {text}", f"k{i}:", f"  {text}: 0"]
    return lines


def kubectl_reads(kubectl: Path, texts: list[str], work: Path) -> list[tuple[Any, str]] | None:
    """What kubectl makes of each text as a value and as a key; ``None``: it refuses the file."""
    header = ["apiVersion: v1", "kind: ConfigMap", "metadata: {name: scalars}", "data:"]
    path = work / "scalars.yaml"
    path.write_text("\n".join(header + [f"  {line}" for line in _document(texts)]) + "\n")
    result = subprocess.run(
        [str(kubectl), "label", "--local", "-f", str(path), "-o", "json", "checked=yes"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        return None
    data = json.loads(result.stdout)["data"]
    return [(data[f"v{i}"], next(iter(data[f"k{i}"]))) for i in range(len(texts))]


def kubetune_reads(texts: list[str]) -> list[tuple[Any, str]] | None:
    try:
        (document,) = load_yaml_documents("\n".join(_document(texts)) + "\n")
    except yaml.YAMLError:
        return None
    return [(document[f"v{i}"], next(iter(document[f"k{i}"]))) for i in range(len(texts))]


def sent(value: Any) -> Any:
    """A value as the API server takes it (a whole float is an integer there)."""
    return as_api_server_stores([value])[0]


def test_study_files_are_read_as_kubectl_reads_them(
    control_plane_bin_dir: Path, tmp_path: Path
) -> None:
    kubectl = control_plane_bin_dir / "kubectl"

    @settings(max_examples=60, derandomize=True, database=None, deadline=None)
    @given(st.lists(scalar_texts.filter(_plain_scalar), min_size=1, max_size=10, unique=True))
    def same(texts: list[str]) -> None:
        theirs, ours = kubectl_reads(kubectl, texts, tmp_path), kubetune_reads(texts)
        # kubectl refuses a file with .inf or .nan as a value, and so does kubetune.
        assert (theirs is None) == (ours is None), texts
        if theirs is None or ours is None:
            return
        for text, their, our in zip(texts, theirs, ours, strict=True):
            assert sent(our[0]) == sent(their[0]), text
            assert type(sent(our[0])) is type(sent(their[0])), text
            assert our[1] == their[1], text

    same()


def test_a_whole_float_where_an_integer_goes_gets_one_verdict_everywhere(
    study_api: Any, namespace: str
) -> None:
    # A JSON client may send 10 as 10.0: the schema takes it as an integer, CEL does not.
    for base in VALID_SPECS:
        for path in _paths(base):
            value = _parent(base, path)[path[-1]]
            if isinstance(value, bool) or not isinstance(value, int):
                continue
            spec = copy.deepcopy(base)
            _parent(spec, path)[path[-1]] = float(value)
            assert_one_verdict(study_api, namespace, spec)
