#!/usr/bin/env bash
# Install torch into the given pip's environment, preferring a CPU build.
#   install_torch.sh PYTHON          torch alone (the core venv)
#   install_torch.sh PYTHON vision   torch + torchvision as one matched pair (the vision venv)
#
# torch alone:
#   1. torch already importable: nothing to do.
#   2. a CPU wheel of torch 2.13.0 reachable without an index (pip's find-links, as on our dev/CI
#      machines): install exactly that, fast and small.
#   3. an ordinary machine: PyTorch's CPU-only index, so a plain setup does not pull a multi-GB CUDA build.
#   4. last resort: the default index.
# torch + torchvision: torchvision's compiled operators only load beside the torch build it was built for
# (PyPI's torchvision next to a CPU-index torch fails with "operator torchvision::nms does not exist"), so
# both always come from one place:
#   1. both already importable and torchvision's operators load: nothing to do.
#   2. PyTorch's CPU-only index, both together (an ordinary machine: small CPU builds).
#   3. the pair that lies on our dev/CI machines' disk (torch 2.14.1 + torchvision 0.29.1, a CUDA build
#      that runs on the CPU), else the same pair from the default index.
set -u
PY=${1:?usage: install_torch.sh PYTHON [vision]}
MODE=${2:-core}
CPU_INDEX=https://download.pytorch.org/whl/cpu

if [ "$MODE" = vision ]; then
  ok() { "$PY" -c "import torch, torchvision; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)" \
           >/dev/null 2>&1; }
  if ok; then exit 0; fi
  if "$PY" -m pip install -q --retries 1 --timeout 30 torch torchvision --index-url "$CPU_INDEX" && ok; then
    exit 0
  fi
  echo "install_torch.sh: no working pair from PyTorch's CPU index; trying torch 2.14.1 + torchvision 0.29.1" >&2
  "$PY" -m pip install -q torch==2.14.1 torchvision==0.29.1 && ok && exit 0
  echo "install_torch.sh: torchvision does not import beside this torch; install a matching pair by hand" >&2
  exit 1
fi

if "$PY" -c "import torch" 2>/dev/null; then exit 0; fi
if "$PY" -m pip install --dry-run --no-index --no-deps -q torch==2.13.0 >/dev/null 2>&1; then
  exec "$PY" -m pip install -q torch==2.13.0
fi
if "$PY" -m pip install -q torch --index-url "$CPU_INDEX"; then exit 0; fi
exec "$PY" -m pip install -q torch
