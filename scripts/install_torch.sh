#!/usr/bin/env bash
# Install torch into the given pip's environment, preferring a CPU build.
#   1. torch already importable: nothing to do.
#   2. a CPU wheel of torch 2.13.0 reachable without an index (pip's find-links, as on our dev/CI
#      machines): install exactly that, fast and small.
#   3. an ordinary machine: PyTorch's CPU-only index, so a plain setup does not pull a multi-GB CUDA build.
#   4. last resort: the default index.
set -u
PY=${1:?usage: install_torch.sh PYTHON}
if "$PY" -c "import torch" 2>/dev/null; then exit 0; fi
if "$PY" -m pip install --dry-run --no-index --no-deps -q torch==2.13.0 >/dev/null 2>&1; then
  exec "$PY" -m pip install -q torch==2.13.0
fi
if "$PY" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu; then exit 0; fi
exec "$PY" -m pip install -q torch
