"""NVIDIA GPU models, their MIG profiles, and the node labels and resources they produce.

A pure module (no Kubernetes client, no I/O) so the operator's unit tests and the simulated
cluster of the e2e tests describe GPUs the same way. The labels are those NVIDIA's
gpu-feature-discovery sets and the resource names those the NVIDIA device plugin advertises
with the MIG ``mixed`` strategy:

- whole GPUs: capacity ``nvidia.com/gpu: N``; labels ``nvidia.com/gpu.product`` (the NVML
  product name with spaces as dashes), ``nvidia.com/gpu.memory`` (MiB), ``nvidia.com/gpu.count``;
- MIG, mixed strategy: capacity ``nvidia.com/mig-<profile>: N`` per profile (and no
  ``nvidia.com/gpu``), labels ``nvidia.com/mig.strategy=mixed`` and
  ``nvidia.com/mig-<profile>.count`` / ``.memory`` / ``.slices.gi`` / ``.slices.ci``.

Memory sizes are what NVML reports for the whole GPU; MIG profile memory is the nominal size of
the profile in MiB (the driver reports slightly less).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "GPU_MODELS",
    "MIG_STRATEGY_LABEL",
    "RESOURCE_GPU",
    "GpuModel",
    "MigProfile",
    "gpu_model",
    "mig_resource_name",
    "node_gpu_labels",
    "node_gpu_resources",
    "validate_mig_layout",
]

RESOURCE_GPU = "nvidia.com/gpu"
MIG_STRATEGY_LABEL = "nvidia.com/mig.strategy"
# A MIG-capable GPU has 7 compute slices and 8 memory slices.
COMPUTE_SLICES_PER_GPU = 7
MEMORY_SLICES_PER_GPU = 8


@dataclass(frozen=True)
class MigProfile:
    """One MIG profile of a GPU model, e.g. ``1g.10gb`` on an A100-80GB.

    Attributes:
        name: The profile name as in the resource name, e.g. ``"2g.20gb"``.
        compute_slices: GPU compute slices (of 7) one instance uses.
        memory_slices: Memory slices (of 8) one instance uses.
        max_per_gpu: How many instances of this profile alone fit on one GPU.
    """

    name: str
    compute_slices: int
    memory_slices: int
    max_per_gpu: int

    @property
    def resource_name(self) -> str:
        return mig_resource_name(self.name)

    @property
    def memory_mib(self) -> int:
        return int(self.name.split(".")[1].removesuffix("gb")) * 1024


@dataclass(frozen=True)
class GpuModel:
    """A GPU model as gpu-feature-discovery describes it.

    Attributes:
        key: The short name tests use, e.g. ``"H100-80GB"``.
        product: The ``nvidia.com/gpu.product`` label value.
        memory_mib: The ``nvidia.com/gpu.memory`` label value (whole GPU, MiB).
        family: The ``nvidia.com/gpu.family`` label value.
        compute_capability: ``(major, minor)``, the ``nvidia.com/gpu.compute.*`` labels.
        mig_profiles: The MIG profiles, empty when the model has no MIG.
    """

    key: str
    product: str
    memory_mib: int
    family: str
    compute_capability: tuple[int, int]
    mig_profiles: tuple[MigProfile, ...] = ()

    @property
    def mig_capable(self) -> bool:
        return bool(self.mig_profiles)

    def mig_profile(self, name: str) -> MigProfile:
        """The profile called ``name`` (with or without the ``nvidia.com/mig-`` prefix)."""
        name = name.removeprefix("nvidia.com/").removeprefix("mig-")
        for profile in self.mig_profiles:
            if profile.name == name:
                return profile
        accepted = ", ".join(p.name for p in self.mig_profiles) or "none (no MIG support)"
        raise ValueError(f"{self.key} has no MIG profile {name!r}; accepted: {accepted}")


def _profiles(*specs: tuple[str, int, int, int]) -> tuple[MigProfile, ...]:
    return tuple(MigProfile(name, c, m, n) for name, c, m, n in specs)


# (name, compute slices, memory slices, max instances per GPU), from NVIDIA's MIG user guide.
_A100_40GB_PROFILES = _profiles(
    ("1g.5gb", 1, 1, 7),
    ("1g.10gb", 1, 2, 4),
    ("2g.10gb", 2, 2, 3),
    ("3g.20gb", 3, 4, 2),
    ("4g.20gb", 4, 4, 1),
    ("7g.40gb", 7, 8, 1),
)
_80GB_PROFILES = _profiles(
    ("1g.10gb", 1, 1, 7),
    ("1g.20gb", 1, 2, 4),
    ("2g.20gb", 2, 2, 3),
    ("3g.40gb", 3, 4, 2),
    ("4g.40gb", 4, 4, 1),
    ("7g.80gb", 7, 8, 1),
)
_H200_PROFILES = _profiles(
    ("1g.18gb", 1, 1, 7),
    ("1g.35gb", 1, 2, 4),
    ("2g.35gb", 2, 2, 3),
    ("3g.71gb", 3, 4, 2),
    ("4g.71gb", 4, 4, 1),
    ("7g.141gb", 7, 8, 1),
)

GPU_MODELS: Mapping[str, GpuModel] = {
    model.key: model
    for model in (
        GpuModel(
            "A100-40GB", "NVIDIA-A100-SXM4-40GB", 40960, "ampere", (8, 0), _A100_40GB_PROFILES
        ),
        GpuModel("A100-80GB", "NVIDIA-A100-SXM4-80GB", 81920, "ampere", (8, 0), _80GB_PROFILES),
        GpuModel("H100-80GB", "NVIDIA-H100-80GB-HBM3", 81559, "hopper", (9, 0), _80GB_PROFILES),
        GpuModel("H200-141GB", "NVIDIA-H200", 143771, "hopper", (9, 0), _H200_PROFILES),
        GpuModel("L4", "NVIDIA-L4", 23034, "ada-lovelace", (8, 9)),
        GpuModel("T4", "Tesla-T4", 15360, "turing", (7, 5)),
    )
}


def gpu_model(key: str) -> GpuModel:
    """The GPU model called ``key``; raises ``ValueError`` naming the accepted keys."""
    try:
        return GPU_MODELS[key]
    except KeyError:
        raise ValueError(
            f"unknown GPU model {key!r}; accepted: {', '.join(sorted(GPU_MODELS))}"
        ) from None


def mig_resource_name(profile: str) -> str:
    """The extended resource of a MIG profile, e.g. ``nvidia.com/mig-2g.20gb``."""
    return f"nvidia.com/mig-{profile}"


def validate_mig_layout(model: GpuModel, layout: Mapping[str, int]) -> None:
    """Check that ``layout`` (profile name -> instances per GPU) fits on one GPU of ``model``.

    The check is the slice budget (7 compute, 8 memory slices) and each profile's maximum count;
    the driver's placement rules are stricter for a few mixes, which tests do not need.

    Raises:
        ValueError: naming the profile or the budget that the layout exceeds.
    """
    if not model.mig_capable:
        raise ValueError(f"{model.key} does not support MIG; use whole GPUs")
    compute = memory = 0
    for name, count in layout.items():
        profile = model.mig_profile(name)
        if count < 0 or count > profile.max_per_gpu:
            raise ValueError(
                f"{model.key}: {count} x {profile.name} per GPU is not possible; "
                f"accepted: 0..{profile.max_per_gpu}"
            )
        compute += profile.compute_slices * count
        memory += profile.memory_slices * count
    if compute > COMPUTE_SLICES_PER_GPU or memory > MEMORY_SLICES_PER_GPU:
        raise ValueError(
            f"{model.key}: MIG layout {dict(layout)} needs {compute} compute and {memory} memory "
            f"slices per GPU; a GPU has {COMPUTE_SLICES_PER_GPU} and {MEMORY_SLICES_PER_GPU}"
        )


def node_gpu_resources(
    model: GpuModel, gpus: int, mig_layout: Mapping[str, int] | None = None
) -> dict[str, str]:
    """Extended resources (capacity = allocatable) of a node with ``gpus`` GPUs of ``model``.

    With ``mig_layout`` (profile -> instances per GPU) every GPU is partitioned the same way and
    the node advertises MIG devices only, as the device plugin does with the mixed strategy.
    """
    if gpus < 1:
        raise ValueError(f"gpus must be at least 1, got {gpus}")
    if not mig_layout:
        return {RESOURCE_GPU: str(gpus)}
    validate_mig_layout(model, mig_layout)
    return {
        model.mig_profile(name).resource_name: str(count * gpus)
        for name, count in mig_layout.items()
        if count
    }


def node_gpu_labels(
    model: GpuModel, gpus: int, mig_layout: Mapping[str, int] | None = None
) -> dict[str, str]:
    """The labels gpu-feature-discovery puts on a node with ``gpus`` GPUs of ``model``."""
    major, minor = model.compute_capability
    labels = {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": model.product,
        "nvidia.com/gpu.memory": str(model.memory_mib),
        "nvidia.com/gpu.count": str(gpus),
        "nvidia.com/gpu.family": model.family,
        "nvidia.com/gpu.compute.major": str(major),
        "nvidia.com/gpu.compute.minor": str(minor),
        "nvidia.com/mig.capable": str(model.mig_capable).lower(),
    }
    if mig_layout:
        validate_mig_layout(model, mig_layout)
        labels[MIG_STRATEGY_LABEL] = "mixed"
        for name, count in mig_layout.items():
            if not count:
                continue
            profile = model.mig_profile(name)
            prefix = f"nvidia.com/mig-{profile.name}"
            labels[f"{prefix}.count"] = str(count * gpus)
            labels[f"{prefix}.memory"] = str(profile.memory_mib)
            labels[f"{prefix}.slices.gi"] = str(profile.compute_slices)
            labels[f"{prefix}.slices.ci"] = str(profile.compute_slices)
    return labels
