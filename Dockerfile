# syntax=docker/dockerfile:1
#
# One image for the kubetune operator and the trial runners.
#
#   docker build --build-arg VARIANT=cpu  -t ghcr.io/kubetune/kubetune:0.1.0-cpu  .
#   docker build --build-arg VARIANT=cuda -t ghcr.io/kubetune/kubetune:0.1.0-cuda .
#
# The variants differ only in the torch wheel:
#   cpu   torch from PyTorch's CPU wheel index: no bundled CUDA libraries, an image of well under
#         1 GB that kind can load quickly. Where that index cannot be reached, build with
#         `--build-arg CPU_TORCH_INDEX=`: torch then comes from PyPI (a CUDA build that runs on
#         CPU) and the CUDA parts a CPU runner never loads are left out (Triton, cuSOLVER, the
#         CUDA Python bindings, NVTX, CCCL, and cuDNN's engine libraries, which cuDNN opens only
#         for a GPU convolution). What torch links at import stays, so `import torch` works.
#   cuda  torch from PyPI, which on Linux x86_64 is a CUDA build carrying its CUDA runtime, cuDNN
#         and NCCL as pip packages; the GPU driver (libcuda, libnvidia-ml) is mounted into the
#         container by the NVIDIA container toolkit. So no nvidia/cuda base image is needed, and
#         both variants share the same Python base (the venv is copied between stages with the
#         same interpreter path). The cuda image also runs on CPU-only nodes.
#
# Without a registry (the recipe the tests use: a Debian base made by mmdebstrap, buildah with
# chroot isolation) see docs/install.md and hack/image/build.sh.
#
# Entry point: `kubetune` (the runner pods run `kubetune runner ...`, estimate pods
# `kubetune estimate ...`). The operator Deployment overrides the command with
# `python -m hpo_operator [kopf run options]`.
#
# The image runs as the numeric user 65532 and needs no writable path outside /tmp, which the
# pods mount as an emptyDir (readOnlyRootFilesystem: true).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG VARIANT=cpu
ARG CPU_TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
# torch first: for the cpu variant from the CPU index, pinned to the version pyproject.toml pins
# (`torch==X` matches the CPU wheel `X+cpu`), so installing the project keeps it.
RUN set -eu; \
    torch_pin="$(python -c 'import tomllib; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; print(next(d for d in deps if d.startswith("torch")))')"; \
    case "${VARIANT}" in \
      cpu)  if [ -n "${CPU_TORCH_INDEX}" ]; then \
              /opt/venv/bin/pip install --index-url "${CPU_TORCH_INDEX}" "${torch_pin}"; \
            else \
              /opt/venv/bin/pip install "${torch_pin}"; \
            fi ;; \
      cuda) /opt/venv/bin/pip install "${torch_pin}" ;; \
      *)    echo "VARIANT must be cpu or cuda, got ${VARIANT}" >&2; exit 1 ;; \
    esac
COPY kubetune_api ./kubetune_api
COPY kubetune_study ./kubetune_study
COPY operator ./operator
COPY trial_runner ./trial_runner
# The project last, then (cpu from PyPI only) what a CPU runner never loads: after the install,
# so that pip's resolver does not bring it back.
RUN set -eu; \
    /opt/venv/bin/pip install .; \
    if [ "${VARIANT}" = cpu ] && [ -z "${CPU_TORCH_INDEX}" ]; then \
      /opt/venv/bin/pip uninstall -y triton nvidia-cusolver cuda-bindings cuda-pathfinder \
        nvidia-nvtx nvidia-cuda-cccl; \
      find /opt/venv/lib -path '*/nvidia/cudnn/lib/libcudnn_*.so*' -delete; \
    fi; \
    /opt/venv/bin/python -I -c 'import torch, optuna, kopf; torch.ones(2).sum()'; \
    /opt/venv/bin/kubetune --help >/dev/null

FROM ${PYTHON_IMAGE}
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="kubetune" \
      org.opencontainers.image.description="kubetune operator and trial runner (${VARIANT})" \
      org.opencontainers.image.licenses="Apache-2.0" \
      dev.kubetune.variant="${VARIANT}"
COPY --from=builder /opt/venv /opt/venv
# Everything that wants to write (pip/torch/triton/inductor/matplotlib caches, tempfiles) goes
# to /tmp; bytecode is compiled at install time and never written at runtime.
ENV PATH=/opt/venv/bin:${PATH} \
    HOME=/tmp \
    TMPDIR=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/.cache/matplotlib \
    TORCHINDUCTOR_CACHE_DIR=/tmp/.cache/torchinductor \
    TRITON_CACHE_DIR=/tmp/.cache/triton \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Libraries that ask who they run as (getpass, pwd) find the runtime user by its uid.
RUN useradd --uid 65532 --user-group --no-create-home --home-dir /tmp \
      --shell /usr/sbin/nologin kubetune
WORKDIR /tmp
USER 65532:65532
ENTRYPOINT ["kubetune"]
CMD ["--help"]
