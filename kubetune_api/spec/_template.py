"""``spec.runner.template``: the part of a runner pod a study's users own.

A ``PodTemplateSpec`` in shape, limited to what a team needs to reach its code, data and
cluster: labels and annotations; volumes, init containers, node selector, affinity,
tolerations, topology spread, image pull secrets, service account, priority, runtime and
scheduler; ``fsGroup`` and supplemental groups; and for the one container, ``runner``, its env,
envFrom, volume mounts and extra resources. The objects inside (a ``Volume``, an ``Affinity``,
an init ``Container`` ...) are the Kubernetes API's own, taken from the ``kubernetes`` client's
models (pydantic models generated from the API's OpenAPI document of the same release as the
control plane the tests run), so a typo anywhere in the template is an unknown field here and,
through the CRD schema generated from the same models, at apply.

What kubetune owns is not in the template's shape (the runner's command, image and security
context; the pod's restart policy, host namespaces ...) or is refused by
:func:`ownership_errors` (kubetune's env names, labels, volumes, mount paths and sized
resources, an init container's security context); the CRD carries the same rules as CEL.

The ``kubernetes`` models are imported when a study has a template, not before: they take a
second or two to import and most local studies have none.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kubetune_api.contract import (
    OWNED_ANNOTATIONS,
    OWNED_ENV,
    OWNED_LABELS,
    OWNED_RESOURCES,
    RUNNER_CONTAINER,
    SHM_PATH,
    SHM_VOLUME,
    TMP_PATH,
    TMP_VOLUME,
)
from kubetune_api.spec._errors import FieldError, format_path, pydantic_errors, python_spellings

__all__ = [
    "MAX_MOUNT_PATH",
    "MAX_TEMPLATE_ITEMS",
    "MAX_VOLUME_NAME",
    "OWNED_MOUNT_PATTERN",
    "QUANTITY_VALUE_PATTERN",
    "is_owned",
    "ownership_errors",
    "template_errors",
    "template_json_schema",
    "template_model",
]

#: Items each list of the template's own objects may hold (volumes, init containers, tolerations,
#: env ...): generous, and a bound the API server's CEL cost estimate needs.
MAX_TEMPLATE_ITEMS = 64
#: Lengths of names and paths inside the template that its rules read: the Pod API's own limit
#: of a volume name (a DNS label), and a mount path far longer than any real one. The CRD
#: carries them too, for the API server's CEL cost estimate.
MAX_VOLUME_NAME, MAX_MOUNT_PATH = 63, 1024
#: Mount paths of kubetune's own volumes (``/tmp``, ``/dev/shm``, with or without a final "/").
OWNED_MOUNT_PATTERN = f"^({TMP_PATH}|{SHM_PATH})/*$"
#: A Kubernetes quantity as text (``10Gi``, ``500m``, ``1e3``), as the API's schemas accept it.
QUANTITY_VALUE_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


def is_owned(key: str, owned: Sequence[str]) -> bool:
    """Whether ``key`` is one of ``owned``, or under one of its prefixes (ending in ``/``)."""
    return any(key.startswith(o) if o.endswith("/") else key == o for o in owned)


@cache
def template_model() -> type[BaseModel]:
    """The pydantic model of ``spec.runner.template`` (built on first use)."""
    from kubernetes.client import models as k8s  # a second or two: see the module's docstring

    Items = Annotated[int, Field(ge=0)]
    Quantity = int | Annotated[str, Field(pattern=QUANTITY_VALUE_PATTERN, max_length=64)]

    class _Part(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    def bounded(alias: str | None = None) -> Any:
        return Field(default=None, alias=alias, max_length=MAX_TEMPLATE_ITEMS)

    class TemplateMetadata(_Part):
        labels: dict[str, str] | None = bounded()
        annotations: dict[str, str] | None = bounded()

    class RunnerResources(_Part):
        requests: dict[str, Quantity] | None = bounded()
        limits: dict[str, Quantity] | None = bounded()

    class RunnerContainer(_Part):
        name: Literal["runner"]
        env: list[k8s.V1EnvVar] | None = bounded()
        env_from: list[k8s.V1EnvFromSource] | None = bounded("envFrom")
        volume_mounts: list[k8s.V1VolumeMount] | None = bounded("volumeMounts")
        resources: RunnerResources | None = None

    class TemplateSecurityContext(_Part):
        fs_group: Items | None = Field(default=None, alias="fsGroup")
        supplemental_groups: list[Items] | None = bounded("supplementalGroups")
        fs_group_change_policy: Literal["OnRootMismatch", "Always"] | None = Field(
            default=None, alias="fsGroupChangePolicy"
        )

    class TemplatePodSpec(_Part):
        volumes: list[k8s.V1Volume] | None = bounded()
        init_containers: list[k8s.V1Container] | None = bounded("initContainers")
        containers: list[RunnerContainer] | None = Field(default=None, max_length=1)
        node_selector: dict[str, str] | None = bounded("nodeSelector")
        affinity: k8s.V1Affinity | None = None
        tolerations: list[k8s.V1Toleration] | None = bounded()
        topology_spread_constraints: list[k8s.V1TopologySpreadConstraint] | None = bounded(
            "topologySpreadConstraints"
        )
        image_pull_secrets: list[k8s.V1LocalObjectReference] | None = bounded("imagePullSecrets")
        service_account_name: str | None = Field(default=None, alias="serviceAccountName")
        automount_service_account_token: bool | None = Field(
            default=None, alias="automountServiceAccountToken"
        )
        priority_class_name: str | None = Field(default=None, alias="priorityClassName")
        runtime_class_name: str | None = Field(default=None, alias="runtimeClassName")
        scheduler_name: str | None = Field(default=None, alias="schedulerName")
        security_context: TemplateSecurityContext | None = Field(
            default=None, alias="securityContext"
        )

    class RunnerTemplate(_Part):
        metadata: TemplateMetadata | None = None
        spec: TemplatePodSpec | None = None

    return RunnerTemplate


def template_json_schema() -> dict[str, Any]:
    """The JSON schema of the template, every ``$ref`` inlined and every description dropped
    (the Kubernetes API documents these objects; the CRD stays small)."""
    schema = template_model().model_json_schema(by_alias=True)
    defs = schema.get("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                target = defs[node["$ref"].rsplit("/", 1)[-1]]
                node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            return {
                key: inline(value)
                for key, value in node.items()
                if key not in ("$defs", "description", "title")
            }
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    out: dict[str, Any] = inline(schema)
    return out


def template_errors(template: Mapping[str, Any], prefix: str) -> list[FieldError]:
    """Every problem of ``template`` (at ``prefix``): its shape, then what kubetune owns."""
    model = template_model()
    try:
        model.model_validate(dict(template), by_alias=True, by_name=False)
    except ValidationError as exc:
        return [
            FieldError(_joined(prefix, e.path), _owned_field_message(e))
            for e in pydantic_errors(exc, dict(template), root=model)
        ]
    misspelt = [
        FieldError(_joined(prefix, format_path(path)), f"unknown field: the API spells it {name}")
        for path, name in python_spellings(dict(template), model, ())
    ]
    return misspelt or ownership_errors(template, prefix)


#: Fields of a pod and its runner container that kubetune sets: the template's shape lacks them,
#: and saying whose they are helps more than "unknown field".
_KUBETUNES_FIELDS = frozenset(
    {
        "command",
        "args",
        "image",
        "imagePullPolicy",
        "workingDir",
        "securityContext",
        "ports",
        "restartPolicy",
        "terminationGracePeriodSeconds",
        "terminationMessagePath",
        "terminationMessagePolicy",
        "runAsUser",
        "runAsGroup",
        "runAsNonRoot",
        "seccompProfile",
        "hostNetwork",
        "hostPID",
        "hostIPC",
        "enableServiceLinks",
    }
)


def _owned_field_message(error: FieldError) -> str:
    field = error.path.rsplit(".", 1)[-1]
    if field in _KUBETUNES_FIELDS and error.message.startswith("unknown field"):
        return f"set by kubetune, not by the template{error.message[len('unknown field') :]}"
    return error.message


def ownership_errors(template: Mapping[str, Any], prefix: str) -> list[FieldError]:
    """What ``template`` (of a valid shape) sets of kubetune's part of the pod."""
    errors: list[FieldError] = []

    def err(path: Sequence[str | int], message: str) -> None:
        errors.append(FieldError(f"{prefix}.{format_path(path)}", message))

    meta = template.get("metadata") or {}
    for field, owned in (("labels", OWNED_LABELS), ("annotations", OWNED_ANNOTATIONS)):
        for key in meta.get(field) or {}:
            if is_owned(key, owned):
                err(("metadata", field, key), f"set by kubetune (it owns {_listed(owned)})")
    spec = template.get("spec") or {}
    volumes = spec.get("volumes") or []
    names = _unique(volumes, ("spec", "volumes"), err)
    for i, volume in enumerate(volumes):
        if volume.get("name") in (TMP_VOLUME, SHM_VOLUME):
            err(("spec", "volumes", i, "name"), f"{volume['name']!r} is kubetune's own volume")
        _length_error(volume["name"], MAX_VOLUME_NAME, ("spec", "volumes", i, "name"), err)
    inits = spec.get("initContainers") or []
    _unique(inits, ("spec", "initContainers"), err)
    for i, init in enumerate(inits):
        at: tuple[str | int, ...] = ("spec", "initContainers", i)
        if init.get("name") == RUNNER_CONTAINER:
            err((*at, "name"), f"{RUNNER_CONTAINER!r} is the runner container's name")
        if init.get("securityContext") is not None:
            err((*at, "securityContext"), "set by kubetune (the restricted security context)")
    for i, container in enumerate(spec.get("containers") or []):
        at = ("spec", "containers", i)
        env = container.get("env") or []
        _unique(env, (*at, "env"), err)
        for j, var in enumerate(env):
            if var.get("name") in OWNED_ENV:
                err((*at, "env", j, "name"), f"{var['name']} is set by kubetune")
        _mount_errors(container.get("volumeMounts") or [], names, at, err)
        for field in ("requests", "limits"):
            for key in (container.get("resources") or {}).get(field) or {}:
                if is_owned(key, OWNED_RESOURCES):
                    err(
                        (*at, "resources", field, key),
                        "sized by kubetune (spec.resources.cpu and memory, the device it picks)",
                    )
    return errors


def _mount_errors(
    mounts: Sequence[Mapping[str, Any]],
    volumes: set[str],
    at: tuple[str | int, ...],
    err: Callable[[Sequence[str | int], str], None],
) -> None:
    for j, mount in enumerate(mounts):
        path = str(mount.get("mountPath", ""))
        if re.match(OWNED_MOUNT_PATTERN, path):
            err((*at, "volumeMounts", j, "mountPath"), f"{path} is mounted by kubetune")
        _length_error(path, MAX_MOUNT_PATH, (*at, "volumeMounts", j, "mountPath"), err)
        _length_error(mount["name"], MAX_VOLUME_NAME, (*at, "volumeMounts", j, "name"), err)
        if mount.get("name") not in volumes:
            known = ", ".join(sorted(volumes)) or "none"
            err(
                (*at, "volumeMounts", j, "name"),
                f"no volume {mount.get('name')!r} in spec.volumes (volumes: {known})",
            )


def _length_error(
    text: str,
    limit: int,
    at: tuple[str | int, ...],
    err: Callable[[Sequence[str | int], str], None],
) -> None:
    if len(text) > limit:
        err(at, f"at most {limit} characters (got {len(text)})")


def _unique(
    items: Sequence[Mapping[str, Any]],
    at: tuple[str | int, ...],
    err: Callable[[Sequence[str | int], str], None],
) -> set[str]:
    seen: set[str] = set()
    for i, item in enumerate(items):
        name = str(item.get("name"))
        if name in seen:
            err((*at, i, "name"), f"duplicate name {name!r}")
        seen.add(name)
    return seen


def _joined(prefix: str, path: str) -> str:
    return f"{prefix}{path}" if not path or path.startswith("[") else f"{prefix}.{path}"


def _listed(owned: Sequence[str]) -> str:
    return ", ".join(f"{o}*" if o.endswith("/") else o for o in owned)
