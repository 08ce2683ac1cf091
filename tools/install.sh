#!/usr/bin/env bash
# Create (or refresh) .venv at the repo root with the full, working OpenMMLab stack.
#
# Idempotent: every step is skipped when its result is already there. The mmcv
# wheel, which takes ~11 minutes to build on 2 cores, is cached OUTSIDE the clone
# (MMGM_CACHE_DIR, default ~/.cache/mmgroupmamba), keyed by the mmcv, torch and
# python versions and by whether CUDA ops were built, so a fresh clone reuses it.
#
# Environment:
#   MMGM_CACHE_DIR   where built wheels are cached (default ~/.cache/mmgroupmamba)
#   MMGM_MMCV_CUDA   1: build mmcv's CUDA ops (needs nvcc); auto: only when nvcc
#                    and a GPU are visible (default); 0: CPU ops only
#   PYTHON           interpreter used to create the venv (default python3.11, then python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MMCV_VERSION=2.1.0
CACHE="${MMGM_CACHE_DIR:-$HOME/.cache/mmgroupmamba}"

log() { printf '[install] %s\n' "$*"; }

PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
# The machine's pip config lists local indexes that warn for every package they lack.
pip_install() {
  "$VPY" -m pip install --disable-pip-version-check -q "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }
}

# Build tools first: mmcv's setup.py, openmim and mmengine's `pkg::` config
# lookup all import pkg_resources, which setuptools 82 removed.
pip_install "setuptools>=77.0.3,<82" wheel ninja psutil

if ! "$VPY" -c "import torch, torchvision, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  log "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION"
  pip_install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi

# ---- mmcv from its sdist, with compiled ops, cached outside the clone ----
want_cuda="${MMGM_MMCV_CUDA:-auto}"
if [ "$want_cuda" = auto ]; then
  if command -v nvcc >/dev/null && "$VPY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    want_cuda=1
  else
    want_cuda=0
  fi
fi
flavour=cpu; [ "$want_cuda" = 1 ] && flavour=cuda
pytag=$("$VPY" -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
key="mmcv-${MMCV_VERSION}_torch-${TORCH_VERSION}_${pytag}_${flavour}"
wheel_dir="$CACHE/wheels/$key"

mmcv_ok() {
  "$VPY" - <<PY 2>/dev/null
import importlib.metadata as md, sys
if md.version('mmcv') != '$MMCV_VERSION':
    sys.exit(1)
import mmcv.ops  # fails when the compiled _ext is missing
PY
}

if ! mmcv_ok; then
  if ! ls "$wheel_dir"/mmcv-*.whl >/dev/null 2>&1; then
    log "building mmcv $MMCV_VERSION ($flavour ops) from sdist; cache key $key (takes ~11 min on 2 cores)"
    build="$(mktemp -d)"
    "$VPY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: "mmcv==$MMCV_VERSION" -d "$build"
    tar -xzf "$build"/mmcv-"$MMCV_VERSION".tar.gz -C "$build"
    src="$build/mmcv-$MMCV_VERSION"
    # torch >= 2.14 headers need C++20; mmcv's setup.py hard-codes an older -std.
    sed -i -e 's/-std=c++14/-std=c++20/g' -e 's/-std=c++17/-std=c++20/g' "$src/setup.py"
    mkdir -p "$wheel_dir"
    ( cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA="$want_cuda" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        "$VPY" -m pip wheel --disable-pip-version-check -q --no-build-isolation --no-deps . -w "$wheel_dir.tmp" )
    mv "$wheel_dir.tmp"/mmcv-*.whl "$wheel_dir"/ && rmdir "$wheel_dir.tmp"
    rm -rf "$build"
  else
    log "reusing cached mmcv wheel from $wheel_dir"
  fi
  # mmcv's runtime requirements come along (it does not require torch, so torch is untouched).
  pip_install --force-reinstall "$wheel_dir"/mmcv-*.whl "mmengine==0.10.7"
  mmcv_ok || { log "mmcv installed but mmcv.ops does not import"; exit 1; }
fi

# ---- the rest of the stack, the test tools and the project itself ----
pip_install -r "$ROOT/requirements/mminstall.txt" -r "$ROOT/requirements/tests.txt"
# openmim without opendatalab/openxlab (see requirements/mminstall.txt), after its real needs.
pip_install Click colorama model-index pandas requests rich tabulate
pip_install --no-deps openmim==0.3.9
pip_install --no-deps -e "$ROOT"
"$VPY" -W ignore -c "import pkg_resources, mmcv.ops, mmengine, mmpretrain, mmdet, mmseg, mmgroupmamba" \
  || { log "the installed stack does not import"; exit 1; }
log "ready: $VENV ($("$VPY" -c 'import mmgroupmamba; print("mmgroupmamba", mmgroupmamba.__version__)'))"
