"""Peak training memory: estimate it, plan micro-batches from it, report it.

Three ways to get the peak memory of one training step of a task's model:

* ``FakeTensor`` (CPU, and the first guess on CUDA): the model, the optimizer and a batch are
  built under :class:`~torch._subclasses.fake_tensor.FakeTensorMode`, so no real memory is
  allocated, and two optimizer steps run under PyTorch's
  :class:`~torch.distributed._tools.mem_tracker.MemTracker`, which follows every tensor
  storage and records the peak of parameters + buffers + gradients + optimizer state +
  activations + temporaries. Two steps, because the optimizer state only exists from the end
  of the first step: the steady-state peak (second step: state live while activations and
  gradients are) is higher than the first step's for activation-heavy models. With gradient
  accumulation the second step runs two micro-batches, so gradients are live during a forward.
* ``Analytic`` (when the model cannot run under fake tensors, e.g. it calls ``.item()`` or has
  data-dependent shapes): real model and optimizer; parameter, buffer, gradient and optimizer
  state bytes are counted exactly (one real step on a tiny batch materialises the state), and
  activations are measured from a real forward on a tiny batch (bytes saved for backward plus
  the output) and scaled linearly to the micro-batch, multiplied by 1.5 for the gradients of
  activations that live during backward.
* ``Probe`` (CUDA only): one real step, ``torch.cuda.max_memory_allocated``.

:func:`measure_training_peak` measures the same two steps for real on CPU from the CPU
allocator's own records (``torch.profiler`` with ``profile_memory=True``), which is how the
estimator's error is reported (``bench/memory_error.py``).

The training step modelled here is the runner's: ``autocast`` for BF16/FP16, loss scaled by
the micro-batch's share of the effective batch, ``backward`` per micro-batch, one optimizer
step per effective batch, ``zero_grad(set_to_none=True)``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TextIO

if TYPE_CHECKING:
    import torch
    from torch import nn

    from trial_runner.spec import HPOStudy, StudySpec
    from trial_runner.task import Task, TaskData

__all__ = [
    "MemoryEstimate",
    "MicroBatchPlan",
    "NoMicroBatchFits",
    "available_memory",
    "estimate_for_study",
    "estimate_training_peak",
    "largest_configuration",
    "measure_training_peak",
    "plan_for_config",
    "plan_micro_batch",
    "resolve_precision",
    "run_estimate",
    "sample_batch",
]

Method = Literal["FakeTensor", "Analytic", "Probe"]

#: Kubernetes keeps at most this many bytes of a container's termination message.
TERMINATION_MESSAGE_LIMIT = 4096

#: Batch sizes of the two real forwards the Analytic fallback fits activations on (linear in
#: the batch: a fixed part, e.g. autocast's low-precision weight copies, plus a per-sample part).
ANALYTIC_TINY_BATCHES = (2, 8)

#: Activations measured after the forward are multiplied by this for the Analytic peak: during
#: backward the saved activations and the gradients flowing through them coexist.
ANALYTIC_ACTIVATION_FACTOR = 1.5


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes of one training step and how they were obtained."""

    peak_bytes: int
    method: Method
    detail: str


@dataclass(frozen=True)
class MicroBatchPlan:
    """How an effective batch is split into micro-batches for gradient accumulation.

    ``accumulation_steps`` micro-batches make one optimizer step: all of ``micro_batch``
    samples but the last, which has ``last_micro_batch`` samples (equal to ``micro_batch``
    when it divides the effective batch).
    """

    micro_batch: int
    accumulation_steps: int
    last_micro_batch: int

    @classmethod
    def for_sizes(cls, effective_batch: int, micro_batch: int) -> MicroBatchPlan:
        """The split of ``effective_batch`` into micro-batches of at most ``micro_batch``."""
        if effective_batch < 1 or micro_batch < 1:
            raise ValueError(
                f"batch sizes must be positive (effective {effective_batch}, micro {micro_batch})"
            )
        micro = min(micro_batch, effective_batch)
        steps = math.ceil(effective_batch / micro)
        return cls(micro, steps, effective_batch - (steps - 1) * micro)

    @property
    def effective_batch(self) -> int:
        return (self.accumulation_steps - 1) * self.micro_batch + self.last_micro_batch

    def sizes(self) -> list[int]:
        """Sample counts of the micro-batches of one optimizer step."""
        return [self.micro_batch] * (self.accumulation_steps - 1) + [self.last_micro_batch]

    def loss_weights(self) -> list[float]:
        """Factor for each micro-batch's mean loss so the summed gradients equal those of the
        mean loss over the whole effective batch (``size / effective``)."""
        total = self.effective_batch
        return [size / total for size in self.sizes()]


class NoMicroBatchFits(MemoryError):
    """Not even a micro-batch of one sample fits the memory available."""


# --------------------------------------------------------------------------- planning (pure)


def plan_micro_batch(
    effective_batch: int, fits: Callable[[int], bool], *, max_micro_batch: int | None
) -> MicroBatchPlan:
    """The largest micro-batch that fits, and the accumulation that reaches ``effective_batch``.

    ``fits`` must be monotone (if a micro-batch fits, every smaller one does). It is first
    asked about the upper bound ``min(effective_batch, max_micro_batch)``; when that does not
    fit, a binary search over powers of two finds the largest power of two that fits, then a
    binary search between it and the next power of two finds the exact largest size.
    Raises :class:`NoMicroBatchFits` when a micro-batch of 1 does not fit.
    """
    if effective_batch < 1:
        raise ValueError(f"effective batch must be positive (got {effective_batch})")
    if max_micro_batch is not None and max_micro_batch < 1:
        raise ValueError(f"max micro-batch must be positive (got {max_micro_batch})")
    upper = min(effective_batch, max_micro_batch or effective_batch)
    if fits(upper):
        return MicroBatchPlan.for_sizes(effective_batch, upper)
    if upper == 1 or not fits(1):
        raise NoMicroBatchFits(f"a micro-batch of 1 sample does not fit (upper bound {upper})")
    # Largest k with 2**k < upper that fits; 2**0 fits, 2**top >= upper does not.
    lo_exp, hi_exp = 0, max(1, (upper - 1).bit_length())
    while hi_exp - lo_exp > 1:
        mid = (lo_exp + hi_exp) // 2
        if fits(2**mid):
            lo_exp = mid
        else:
            hi_exp = mid
    lo, hi = 2**lo_exp, min(2**hi_exp, upper)  # lo fits, hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return MicroBatchPlan.for_sizes(effective_batch, lo)


# --------------------------------------------------------------------------- search space


def largest_configuration(spec: StudySpec) -> dict[str, Any]:
    """The configuration of the search space that needs the most memory.

    Assumes memory grows with every numeric parameter (widths, depths, batch sizes): Int and
    Float take their ``high``, a Categorical its largest numeric choice (its first choice when
    none is numeric). A parameter whose group no stage searches keeps its ``default``.
    Parameters the search space does not name are left out, so the task's own defaults apply.
    """
    searched: set[str] | None = None
    if spec.stages:
        searched = {group for stage in spec.stages for group in stage.groups}
    config: dict[str, Any] = {}
    for p in spec.search_space:
        if searched is not None and p.group not in searched and p.default is not None:
            config[p.name] = _typed(p.type, p.default)
        elif p.type == "Categorical":
            choices = p.choices or []
            numeric = [c for c in choices if _numeric(c) is not None]
            config[p.name] = (
                max(numeric, key=lambda c: _numeric(c) or 0.0) if numeric else choices[0]
            )
        else:
            assert p.high is not None
            config[p.name] = _typed(p.type, p.high)
    return config


def _numeric(value: int | str) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return float(value)
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _typed(kind: str, value: int | str) -> int | float | str:
    if kind == "Int":
        return int(float(value)) if isinstance(value, str) else value
    if kind == "Float":
        return float(value)
    return value


def effective_batch_size(spec: StudySpec, config: Mapping[str, Any]) -> int:
    """Samples per optimizer step: the batch-size parameter, else ``effectiveBatchSize``,
    else 32."""
    value = config.get(spec.training.batch_size_parameter)
    if value is not None:
        return int(value)
    if spec.training.effective_batch_size is not None:
        return spec.training.effective_batch_size
    return 32


# --------------------------------------------------------------------------- the training step


def resolve_precision(requested: str, device: torch.device) -> str:
    """``Auto`` as the engine resolves it: BF16 on GPUs that support it, FP32 elsewhere."""
    import torch

    if requested != "Auto":
        return requested
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "BF16"
    return "FP32"


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    import torch

    precision = resolve_precision(precision, device)
    if precision == "FP32":
        return contextlib.nullcontext()
    if precision not in ("BF16", "FP16"):
        raise ValueError(f"unknown precision {precision!r} (Auto, BF16, FP16 or FP32)")
    dtype = torch.bfloat16 if precision == "BF16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _optimizer_flags(device: torch.device, fused: bool | None) -> tuple[bool, bool]:
    use_fused = device.type == "cuda" if fused is None else fused
    return use_fused, not use_fused


def _training_steps(
    task: Task,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    precision: str,
    device: torch.device,
    accumulation_steps: int,
    before_forward: Callable[[], None] | None = None,
) -> None:
    """Two optimizer steps as the runner does them (the second with two micro-batches when
    the plan accumulates). ``batches`` holds the micro-batches to cycle through;
    ``before_forward`` is called before every forward but the first."""
    micro_batches_per_step = [1, 2 if accumulation_steps > 1 else 1]
    i = 0
    for count in micro_batches_per_step:
        for _ in range(count):
            if i and before_forward is not None:
                before_forward()
            inputs, targets = batches[i % len(batches)]
            i += 1
            with _autocast(precision, device):
                outputs = model(inputs)
                loss = task.loss(outputs, targets) / count
            del outputs
            loss.backward()  # type: ignore[no-untyped-call]
            del loss
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def sample_batch(data: TaskData, rows: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``rows`` samples of a task's data as an ``(inputs, targets)`` pair."""
    import torch

    if isinstance(data.inputs, torch.Tensor):
        if data.targets is None:
            raise ValueError("task data has tensor inputs but no targets")
        n = min(rows, int(data.inputs.shape[0]))
        return data.inputs[:n], data.targets[:n]
    items = [data.inputs[i] for i in range(min(rows, len(data)))]
    if not items:
        raise ValueError("task data is empty")
    return (
        torch.stack([torch.as_tensor(x) for x, _ in items]),
        torch.stack([torch.as_tensor(y) for _, y in items]),
    )


def _rows(sample: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` rows made of the sample's rows, repeated as needed."""
    import torch

    index = torch.arange(count) % int(sample.shape[0])
    return sample[index]


def _storage_bytes(tensors: Iterator[torch.Tensor]) -> int:
    seen: set[int] = set()
    total = 0
    for t in tensors:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
    import torch

    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                yield value


# --------------------------------------------------------------------------- estimators


def estimate_training_peak(
    task: Task,
    params: Mapping[str, Any],
    micro_batch: int,
    *,
    sample_input: torch.Tensor,
    sample_target: torch.Tensor,
    precision: str,
    device: torch.device,
    accumulation_steps: int = 1,
    fused: bool | None = None,
) -> MemoryEstimate:
    """Peak memory of training ``params`` at ``micro_batch`` samples per forward on ``device``.

    ``sample_input``/``sample_target`` are a few real samples (their shapes and dtypes define
    the batch; the Analytic fallback also runs a real forward on them). ``fused`` picks the
    optimizer implementation (default: fused on CUDA, foreach elsewhere), as the runner does.
    On CPU: FakeTensor, else Analytic. On CUDA: the same as a first guess, then a real Probe
    when the guess fits the free memory.
    """
    if micro_batch < 1:
        raise ValueError(f"micro-batch must be positive (got {micro_batch})")
    try:
        guess = _estimate_fake(
            task,
            params,
            micro_batch,
            sample_input=sample_input,
            sample_target=sample_target,
            precision=precision,
            device=device,
            accumulation_steps=accumulation_steps,
            fused=fused,
        )
    except Exception as exc:  # any failure to trace under fake tensors: measure instead
        reason = f"{type(exc).__name__}: {_first_line(exc)}"
        guess = _estimate_analytic(
            task,
            params,
            micro_batch,
            sample_input=sample_input,
            sample_target=sample_target,
            precision=precision,
            device=device,
            accumulation_steps=accumulation_steps,
            fused=fused,
            reason=reason,
        )
    if device.type != "cuda":
        return guess
    return _probe_cuda(
        task,
        params,
        micro_batch,
        sample_input=sample_input,
        sample_target=sample_target,
        precision=precision,
        device=device,
        accumulation_steps=accumulation_steps,
        fused=fused,
        guess=guess,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


def _estimate_fake(
    task: Task,
    params: Mapping[str, Any],
    micro_batch: int,
    *,
    sample_input: torch.Tensor,
    sample_target: torch.Tensor,
    precision: str,
    device: torch.device,
    accumulation_steps: int,
    fused: bool | None,
) -> MemoryEstimate:
    use_fused, use_foreach = _optimizer_flags(device, fused)
    with _quiet("torch._subclasses.fake_tensor"):
        return _fake_step(
            task,
            params,
            micro_batch,
            sample_input,
            sample_target,
            precision,
            device,
            accumulation_steps,
            use_fused,
            use_foreach,
        )


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Silence a logger: fake tensors log a traceback for every op they cannot run, and that
    is an expected way for the FakeTensor estimate to fail."""
    logger = logging.getLogger(logger_name)
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _fake_step(
    task: Task,
    params: Mapping[str, Any],
    micro_batch: int,
    sample_input: torch.Tensor,
    sample_target: torch.Tensor,
    precision: str,
    device: torch.device,
    accumulation_steps: int,
    use_fused: bool,
    use_foreach: bool,
) -> MemoryEstimate:
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    # Built on the meta device (no memory, no fake tensors yet: deep copies of fake
    # parameters, as nn.TransformerEncoder makes, would belong to another fake mode), then
    # given fake storage on the target device.
    with torch.device("meta"):
        meta_model = task.build_model(params)
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)  # meta inputs of to_empty only
    with fake_mode:
        model = meta_model.to_empty(device=device)
        fake_mode.allow_non_fake_inputs = False  # a real tensor in the step is a bug: fall back
        model.train()
        optimizer = task.build_optimizer(model, params, fused=use_fused, foreach=use_foreach)
        batches = [
            (
                torch.empty(
                    (micro_batch, *sample_input.shape[1:]), dtype=sample_input.dtype, device=device
                ),
                torch.empty(
                    (micro_batch, *sample_target.shape[1:]),
                    dtype=sample_target.dtype,
                    device=device,
                ),
            )
            for _ in range(2 if accumulation_steps > 1 else 1)
        ]
        tracker = MemTracker()
        tracker.track_external(model, optimizer, *[t for pair in batches for t in pair])
        with tracker:
            # MemTracker keeps per-module stats for one forward; the global peak survives.
            _training_steps(
                task,
                model,
                optimizer,
                batches,
                precision,
                device,
                accumulation_steps,
                before_forward=tracker.reset_mod_stats,
            )
        snapshot = tracker.get_tracker_snapshot("peak")
    # The training device's entry; "cuda" matches "cuda:0". Other devices (AdamW's step
    # counters stay on the CPU) are not the memory this estimate sizes.
    per_device: dict[Any, int] = {}
    for tracked, values in snapshot.items():
        if tracked.type == device.type and device.index in (None, tracked.index):
            per_device = dict(values)
            break
    peak = int(per_device.get("Total", 0))
    parts = ", ".join(
        f"{getattr(key, 'value', key)}={_mib(int(value))}"
        for key, value in per_device.items()
        if key != "Total" and value
    )
    return MemoryEstimate(peak, "FakeTensor", f"MemTracker peak under FakeTensorMode: {parts}")


def _estimate_analytic(
    task: Task,
    params: Mapping[str, Any],
    micro_batch: int,
    *,
    sample_input: torch.Tensor,
    sample_target: torch.Tensor,
    precision: str,
    device: torch.device,
    accumulation_steps: int,
    fused: bool | None,
    reason: str,
) -> MemoryEstimate:
    import torch

    use_fused, use_foreach = _optimizer_flags(device, fused)
    model = task.build_model(params).to(device)
    model.train()
    optimizer = task.build_optimizer(model, params, fused=use_fused, foreach=use_foreach)
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def forward_activations(rows: int) -> int:
        """Bytes a real forward of ``rows`` samples keeps for backward, plus its output."""
        inputs = _rows(sample_input, rows).to(device)
        targets = _rows(sample_target, rows).to(device)
        excluded = param_storages | {inputs.untyped_storage().data_ptr()}
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in excluded:
                saved[storage.data_ptr()] = storage.nbytes()
            return t

        with (
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            _autocast(precision, device),
        ):
            outputs = model(inputs)
            loss = task.loss(outputs, targets)
        saved.setdefault(outputs.untyped_storage().data_ptr(), outputs.untyped_storage().nbytes())
        loss.backward()  # type: ignore[no-untyped-call]
        return sum(saved.values())

    small, large = ANALYTIC_TINY_BATCHES
    small_bytes = forward_activations(small)
    large_bytes = forward_activations(large)
    per_sample = max(0.0, (large_bytes - small_bytes) / (large - small))
    fixed = max(0.0, small_bytes - per_sample * small)
    optimizer.step()  # materialises the optimizer state so it can be counted exactly
    optimizer.zero_grad(set_to_none=True)

    trainable = [p for p in model.parameters() if p.requires_grad]
    param_bytes = _storage_bytes(iter(list(model.parameters())))
    buffer_bytes = _storage_bytes(iter(list(model.buffers())))
    grad_bytes = sum(p.numel() * p.element_size() for p in trainable)
    state_bytes = _storage_bytes(_optimizer_tensors(optimizer))
    activation_bytes = int((fixed + per_sample * micro_batch) * ANALYTIC_ACTIVATION_FACTOR)
    batch_bytes = micro_batch * (
        sample_input[:1].numel() * sample_input.element_size()
        + sample_target[:1].numel() * sample_target.element_size()
    )
    batch_bytes *= 2 if accumulation_steps > 1 else 1
    # A foreach optimizer step allocates temporaries about the size of the parameters; a
    # fused one does not. The step's peak and the backward's peak do not overlap.
    step_bytes = 0 if use_fused else grad_bytes
    resident = param_bytes + buffer_bytes + state_bytes + grad_bytes + batch_bytes
    peak = resident + max(activation_bytes, step_bytes)
    detail = (
        f"fake tensors failed ({reason}); params={_mib(param_bytes)}, "
        f"buffers={_mib(buffer_bytes)}, grads={_mib(grad_bytes)}, "
        f"optimizer={_mib(state_bytes)} (+{_mib(step_bytes)} during the step), "
        f"activations={_mib(activation_bytes)} "
        f"({ANALYTIC_ACTIVATION_FACTOR:g} x the bytes saved by real forwards of {small} and "
        f"{large} samples, {_mib(int(fixed))} + {int(per_sample)} B/sample, at "
        f"{micro_batch}), batch={_mib(batch_bytes)}"
    )
    return MemoryEstimate(peak, "Analytic", detail)


def _probe_cuda(
    task: Task,
    params: Mapping[str, Any],
    micro_batch: int,
    *,
    sample_input: torch.Tensor,
    sample_target: torch.Tensor,
    precision: str,
    device: torch.device,
    accumulation_steps: int,
    fused: bool | None,
    guess: MemoryEstimate,
) -> MemoryEstimate:
    """One real training step on the GPU; guarded by the first guess and by OOM handling."""
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    if guess.peak_bytes > free:
        return guess  # probing would only run out of memory
    use_fused, use_foreach = _optimizer_flags(device, fused)
    out_of_memory: str | None = None
    peak = 0
    try:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        model = task.build_model(params).to(device)
        model.train()
        optimizer = task.build_optimizer(model, params, fused=use_fused, foreach=use_foreach)
        batches = [
            (
                _rows(sample_input, micro_batch).to(device),
                _rows(sample_target, micro_batch).to(device),
            )
            for _ in range(2 if accumulation_steps > 1 else 1)
        ]
        _training_steps(task, model, optimizer, batches, precision, device, accumulation_steps)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - baseline
        del model, optimizer, batches
    except torch.OutOfMemoryError as exc:
        out_of_memory = _first_line(exc)
    # Free outside the except block: the traceback holds the step's tensors alive inside it.
    gc.collect()
    torch.cuda.empty_cache()
    if out_of_memory is not None:
        return MemoryEstimate(
            max(guess.peak_bytes, free + 1),
            "Probe",
            f"out of memory at micro-batch {micro_batch} ({out_of_memory}); "
            f"first guess {guess.method} {_mib(guess.peak_bytes)}",
        )
    return MemoryEstimate(
        int(peak),
        "Probe",
        f"torch.cuda.max_memory_allocated over one real step; first guess {guess.method} "
        f"{_mib(guess.peak_bytes)}",
    )


# --------------------------------------------------------------------------- measurement


def measure_training_peak(
    task: Task,
    params: Mapping[str, Any],
    micro_batch: int,
    *,
    sample_input: torch.Tensor,
    sample_target: torch.Tensor,
    precision: str,
    accumulation_steps: int = 1,
    fused: bool | None = None,
) -> int:
    """Measured peak bytes of the same training steps, for real, on CPU.

    The model, optimizer and micro-batches are built for real; their bytes are counted from
    their storages; then the steps run under ``torch.profiler`` with ``profile_memory=True``,
    whose allocation events come from the CPU allocator itself (every allocation and free,
    including those no dispatch mode sees). The peak is the live bytes before the steps plus
    the highest running sum of the allocation events.
    """
    import torch
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    device = torch.device("cpu")
    use_fused, use_foreach = _optimizer_flags(device, fused)
    gc.collect()
    model = task.build_model(params)
    model.train()
    optimizer = task.build_optimizer(model, params, fused=use_fused, foreach=use_foreach)
    batches = [
        (_rows(sample_input, micro_batch), _rows(sample_target, micro_batch))
        for _ in range(2 if accumulation_steps > 1 else 1)
    ]
    before = _storage_bytes(
        iter([*model.parameters(), *model.buffers(), *[t for pair in batches for t in pair]])
    )
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _training_steps(task, model, optimizer, batches, precision, device, accumulation_steps)
    events: list[tuple[int, int]] = []
    pending = list(prof.profiler.kineto_results.experimental_event_tree())
    while pending:
        node = pending.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        pending.extend(node.children)
    events.sort()
    live = highest = 0
    for _, size in events:
        live += size
        highest = max(highest, live)
    return before + highest


# --------------------------------------------------------------------------- capacity


def available_memory(device: torch.device) -> int:
    """Bytes training may use on ``device``: free GPU memory, or on CPU the smaller of the
    kernel's ``MemAvailable`` and what the container's cgroup limit leaves."""
    import torch

    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    candidates: list[int] = []
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        (  # cgroup v1
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
        except OSError:
            continue
        with contextlib.suppress(OSError, ValueError):
            if limit != "max" and int(limit) < 2**60:  # v1 says "no limit" with a huge number
                with open(usage_file) as f:
                    candidates.append(int(limit) - int(f.read().strip()))
        break
    if not candidates:
        page = os.sysconf("SC_PAGE_SIZE")
        candidates.append(int(os.sysconf("SC_AVPHYS_PAGES")) * page)
    return max(0, min(candidates))


def plan_for_config(
    task: Task,
    params: Mapping[str, Any],
    effective_batch: int,
    *,
    capacity_bytes: int,
    headroom: float,
    sample_input: torch.Tensor,
    sample_target: torch.Tensor,
    precision: str,
    device: torch.device,
    max_micro_batch: int | None = None,
    fused: bool | None = None,
) -> tuple[MicroBatchPlan, MemoryEstimate]:
    """The micro-batch plan of one configuration and the estimate of its chosen micro-batch.

    A micro-batch fits when its estimated peak plus ``headroom`` (a fraction) is at most
    ``capacity_bytes``. The common case (the whole effective batch fits) costs one estimate.
    """
    estimates: dict[int, MemoryEstimate] = {}

    def estimate(micro: int) -> MemoryEstimate:
        if micro not in estimates:
            plan = MicroBatchPlan.for_sizes(effective_batch, micro)
            estimates[micro] = estimate_training_peak(
                task,
                params,
                micro,
                sample_input=sample_input,
                sample_target=sample_target,
                precision=precision,
                device=device,
                accumulation_steps=plan.accumulation_steps,
                fused=fused,
            )
        return estimates[micro]

    def fits(micro: int) -> bool:
        return estimate(micro).peak_bytes * (1 + headroom) <= capacity_bytes

    plan = plan_micro_batch(effective_batch, fits, max_micro_batch=max_micro_batch)
    return plan, estimate(plan.micro_batch)


# --------------------------------------------------------------------------- kubetune estimate


def estimate_for_study(study: HPOStudy, device: torch.device) -> dict[str, Any]:
    """The estimate ``kubetune estimate`` prints and the operator reads.

    Keys: ``peakBytes`` (the training step's peak at the chosen micro-batch), ``method``,
    ``config`` (the largest configuration), ``microBatch``, ``accumulationSteps`` (the largest
    micro-batch whose peak plus headroom fits this device's free memory),
    ``effectiveBatch``, ``headroomBytes`` (``peakBytes`` x ``resources.memoryHeadroom``),
    ``fullBatchPeakBytes`` (the peak without splitting the batch beyond
    ``training.maxMicroBatch``: what a device sized by the operator needs to train unsplit),
    ``fitsDevice`` (false when not even one sample fits here; ``peakBytes`` is then the
    one-sample peak), ``dataBytes`` (the task's tensors as loaded; they stay resident in the
    runner), ``device`` and ``precision`` (as resolved on this device).
    """
    import torch

    from trial_runner.spec import parse_number
    from trial_runner.task import load_task_class

    spec = study.spec
    task = load_task_class(spec.task.entrypoint)(spec.task.config)
    data = task.load_data()
    sample_input, sample_target = sample_batch(data)
    config = largest_configuration(spec)
    effective = effective_batch_size(spec, config)
    headroom = parse_number(spec.resources.memory_headroom)
    precision = resolve_precision(spec.training.precision, device)
    fused = spec.training.fused_optimizer and device.type == "cuda"
    capacity = available_memory(device)
    upper = min(effective, spec.training.max_micro_batch or effective)
    full_plan = MicroBatchPlan.for_sizes(effective, upper)
    full = estimate_training_peak(
        task,
        config,
        upper,
        sample_input=sample_input,
        sample_target=sample_target,
        precision=precision,
        device=device,
        accumulation_steps=full_plan.accumulation_steps,
        fused=fused,
    )
    fits_device = True
    if full.peak_bytes * (1 + headroom) <= capacity:
        plan, estimate = full_plan, full
    else:
        try:
            plan, estimate = plan_for_config(
                task,
                config,
                effective,
                capacity_bytes=capacity,
                headroom=headroom,
                sample_input=sample_input,
                sample_target=sample_target,
                precision=precision,
                device=device,
                max_micro_batch=upper,
                fused=fused,
            )
        except NoMicroBatchFits:
            # This machine cannot train it, but the operator sizes another one: report the
            # smallest need (micro-batch 1) instead of failing.
            fits_device = False
            plan = MicroBatchPlan.for_sizes(effective, 1)
            estimate = estimate_training_peak(
                task,
                config,
                1,
                sample_input=sample_input,
                sample_target=sample_target,
                precision=precision,
                device=device,
                accumulation_steps=plan.accumulation_steps,
                fused=fused,
            )
    data_bytes = 0
    for value in (data.inputs, data.targets):
        if isinstance(value, torch.Tensor):
            data_bytes += value.untyped_storage().nbytes()
    return {
        "peakBytes": estimate.peak_bytes,
        "method": estimate.method,
        "config": config,
        "microBatch": plan.micro_batch,
        "accumulationSteps": plan.accumulation_steps,
        "effectiveBatch": effective,
        "headroomBytes": int(estimate.peak_bytes * headroom),
        "fullBatchPeakBytes": full.peak_bytes,
        "fitsDevice": fits_device,
        "dataBytes": data_bytes,
        "device": str(device),
        "precision": precision,
        "detail": estimate.detail,
    }


def termination_message(result: Mapping[str, Any]) -> str:
    """Compact JSON of ``result`` within Kubernetes' 4096-byte termination-message limit.

    ``detail`` is dropped first, then long config values are shortened, then the config goes.
    """
    reduced = dict(result)
    text = json.dumps(reduced, separators=(",", ":"), default=str)
    if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
        return text
    reduced.pop("detail", None)
    reduced["config"] = {
        k: (v if not isinstance(v, str) or len(v) <= 64 else v[:61] + "...")
        for k, v in dict(result.get("config", {})).items()
    }
    text = json.dumps(reduced, separators=(",", ":"), default=str)
    if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
        return text
    reduced["config"] = {}
    reduced["configTruncated"] = True
    return json.dumps(reduced, separators=(",", ":"), default=str)


def _mib(value: int) -> str:
    return f"{value / 2**20:.2f} MiB"


def format_estimate(study: HPOStudy, result: Mapping[str, Any]) -> str:
    """The human-readable table of ``kubetune estimate``."""
    config = ", ".join(f"{k}={v}" for k, v in result["config"].items())
    rows = [
        ("Study", study.name),
        ("Task", study.spec.task.entrypoint),
        ("Device", str(result.get("device", ""))),
        ("Largest config", config),
        ("Precision", str(result.get("precision", study.spec.training.precision))),
        (
            "Batch",
            f"effective {result['effectiveBatch']} = micro-batch {result['microBatch']} "
            f"x {result['accumulationSteps']} accumulation step(s)",
        ),
        ("Method", str(result["method"])),
        ("Peak (training step)", _mib(int(result["peakBytes"]))),
        (
            "Headroom",
            f"{_mib(int(result['headroomBytes']))} ({study.spec.resources.memory_headroom})",
        ),
        ("Peak + headroom", _mib(int(result["peakBytes"]) + int(result["headroomBytes"]))),
        (
            "Peak, batch unsplit",
            f"{_mib(int(result.get('fullBatchPeakBytes', 0)))}"
            + ("" if result.get("fitsDevice", True) else " (does not fit this device)"),
        ),
        ("Data held in memory", _mib(int(result.get("dataBytes", 0)))),
        ("Detail", str(result.get("detail", ""))),
    ]
    if study.spec.resources.peak_memory:
        rows.append(
            ("Note", f"spec.resources.peakMemory={study.spec.resources.peak_memory} overrides")
        )
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def run_estimate(
    study: HPOStudy,
    *,
    as_json: bool,
    termination_message_path: str | None,
    device: torch.device | None = None,
    out: TextIO | None = None,
) -> int:
    """``kubetune estimate``: print the estimate (table or JSON), write the termination message.

    Returns the exit code: 0, or 1 when the estimate fails (the error is printed to stderr
    and written as ``{"error": ...}`` to the termination message).
    """
    import torch

    stream = out or sys.stdout
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        result = estimate_for_study(study, device)
    except Exception as exc:
        message = f"{type(exc).__name__}: {_first_line(exc)}"
        print(f"kubetune estimate: {message}", file=sys.stderr)
        _write_termination(termination_message_path, json.dumps({"error": message[:3000]}))
        return 1
    text = termination_message(result)
    _write_termination(termination_message_path, text)
    if as_json:
        print(json.dumps(result, indent=2, default=str), file=stream)
    else:
        print(format_estimate(study, result), file=stream)
    return 0


def _write_termination(path: str | None, text: str) -> None:
    if path:
        with open(path, "w") as f:
            f.write(text)
