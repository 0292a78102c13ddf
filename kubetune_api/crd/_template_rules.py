"""CEL rules, list types and bounds of the runner pod template (``spec.runner.template``),
mirroring ``kubetune_api.spec`` ``ownership_errors``: what kubetune sets stays kubetune's."""

from __future__ import annotations

from typing import Any

from kubetune_api.contract import (
    OWNED_ANNOTATIONS,
    OWNED_ENV,
    OWNED_LABELS,
    OWNED_RESOURCES,
    RUNNER_CONTAINER,
    SHM_VOLUME,
    TMP_VOLUME,
)
from kubetune_api.spec import MAX_TEMPLATE_ITEMS, OWNED_MOUNT_PATTERN

__all__ = ["TEMPLATE", "TEMPLATE_EXTRAS", "TEMPLATE_RULES"]

#: Path of the runner pod template (``spec.runner.template``); below it the Kubernetes API's
#: own objects, checked by their schema (no number-kind rules: see :func:`number_kind_rules`).
TEMPLATE = "runner.template"


def _owned_keys_rule(owned: tuple[str, ...], what: str) -> dict[str, str]:
    """Map keys none of which is ``owned`` (a prefix ends with "/"), as ``is_owned`` says."""
    tests = " || ".join(f"k.startsWith('{o}')" if o.endswith("/") else f"k == '{o}'" for o in owned)
    listed = ", ".join(f"{o}*" if o.endswith("/") else o for o in owned)
    return {"rule": f"self.all(k, !({tests}))", "message": f"{what} set by kubetune ({listed})"}


def _quoted(names: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{n}'" for n in names) + "]"


#: Rules of the runner pod template, mirroring ``kubetune_api.spec`` ``ownership_errors``.
TEMPLATE_RULES: dict[str, list[dict[str, str]]] = {
    "metadata.labels": [_owned_keys_rule(OWNED_LABELS, "labels")],
    "metadata.annotations": [_owned_keys_rule(OWNED_ANNOTATIONS, "annotations")],
    "spec": [
        {
            "rule": "!has(self.containers) || self.containers.all(c, !has(c.volumeMounts) || "
            "c.volumeMounts.all(m, has(self.volumes) && self.volumes.exists(v, "
            "v.name == m.name)))",
            "message": "every volume mount of the runner container names a volume of spec.volumes",
            "fieldPath": ".containers",
        }
    ],
    "spec.volumes[]": [
        {
            "rule": f"!(self.name in {_quoted((TMP_VOLUME, SHM_VOLUME))})",
            "message": "is kubetune's own volume",
            "fieldPath": ".name",
        }
    ],
    "spec.initContainers[]": [
        {
            "rule": f"self.name != '{RUNNER_CONTAINER}'",
            "message": "is the runner container's name",
            "fieldPath": ".name",
        },
        {
            "rule": "!has(self.securityContext)",
            "message": "set by kubetune (the restricted security context)",
            "fieldPath": ".securityContext",
        },
    ],
    "spec.containers[].env[]": [
        {
            "rule": f"!(self.name in {_quoted(OWNED_ENV)})",
            "message": "is set by kubetune",
            "fieldPath": ".name",
        }
    ],
    "spec.containers[].volumeMounts[]": [
        {
            "rule": f"!self.mountPath.matches('{OWNED_MOUNT_PATTERN}')",
            "message": "is mounted by kubetune",
            "fieldPath": ".mountPath",
        }
    ],
    **{
        f"spec.containers[].resources.{field}": [
            _owned_keys_rule(OWNED_RESOURCES, "sized by kubetune: resources")
        ]
        for field in ("requests", "limits")
    },
}

_NAMED_LIST = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}
#: List types and bounds of the template: named lists reject a repeated name, as the Pod API
#: does, and maps are bounded like the model's lists, for the CEL cost estimate.
TEMPLATE_EXTRAS: dict[str, dict[str, Any]] = {
    "spec.volumes": _NAMED_LIST,
    "spec.initContainers": _NAMED_LIST,
    "spec.containers": _NAMED_LIST,
    "spec.containers[].env": _NAMED_LIST,
    **{
        path: {"maxProperties": MAX_TEMPLATE_ITEMS}
        for path in (
            "metadata.labels",
            "metadata.annotations",
            "spec.nodeSelector",
            "spec.containers[].resources.requests",
            "spec.containers[].resources.limits",
        )
    },
}
