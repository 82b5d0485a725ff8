#!/usr/bin/env bash
# The real-teacher benchmark (bench/cifar10_real_teacher.py) on a lent GPU, in ONE device call that
# ends in under 8 minutes: the same rows as the CPU table, fine-tuned E = 10 epochs (EPOCHS) with bf16,
# channels-last, torch.compile (student and BatchNorm-folded teacher) and the data resident on the GPU;
# ONNX Runtime CPU latency (1 thread, batch 1/32) and bf16 CUDA-graph latency at batch 256, each side by
# side with the teacher. Rows that would not fit the time budget (BUDGET_S, default 420 s) are not
# started; the table says which ran. Nothing is fetched from the network.
#
# Prepare here, once (bench_data/ is git-ignored; with the tree it stays under the 64 MiB a call carries):
#   mkdir -p bench_data/wheels
#   cp ../shared/data/cifar10-jpeg.npz bench_data/
#   cp -r ../shared/models/cifar10-resnet56 bench_data/
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
#       -d bench_data/wheels pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
#       typing-inspection==0.4.5 typing-extensions==4.16.0 torch-pruning==1.6.1
#   (the GPU image has torch, onnx, onnxruntime, safetensors, typer, rich, PyYAML, scikit-learn, pillow;
#    it lacks pydantic and torch-pruning, which these wheels bring)
# Run it (the session's device tool), exactly:
#   run(command="bash bench/gpu.sh", carry=["bench_data"], timeout_s=540)
# What comes back in $OUT: table.md, results.json, run.log (three files; the distillprune rows' run
# folders stay in /tmp on the device).
# Check it here without a GPU (the test suite does, on generated data):
#   DATA=tiny.npz SOURCE=npz TEACHER=tiny_ckpt OUT=/tmp/o bash bench/gpu.sh --quick --keep-blocks 1
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-bench_data/cifar10-jpeg.npz}
SOURCE=${SOURCE:-cifar10_jpeg}
TEACHER=${TEACHER:-bench_data/cifar10-resnet56}
OUT=${OUT:-bench_out/gpu}
EPOCHS=${EPOCHS:-10}
BUDGET_S=${BUDGET_S:-420}
ROWS=${ROWS:-teacher,tp_l2,tp_l2_r8,drop,dp_2x,dp_3x,dp_4x,trainer}
THREADS=${THREADS:-8}  # torch threads for the CPU-side work (pruning, MAC counts); the GPU trains
PY=${PYTHON:-python3}

if ! "$PY" -c "import pydantic, torch_pruning" 2>/dev/null; then
    if ! ls bench_data/wheels/*.whl >/dev/null 2>&1; then
        echo "pydantic / torch-pruning missing and no wheels in bench_data/wheels (see this script's header)" >&2
        exit 2
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/dp_site \
        bench_data/wheels/*.whl
    export PYTHONPATH=/tmp/dp_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore

args=(--gpu --data "$DATA" --source "$SOURCE" --teacher "$TEACHER" --out "$OUT" --runs-dir /tmp/dp_runs
      --epochs "$EPOCHS" --budget-s "$BUDGET_S" --rows "$ROWS" --threads "$THREADS" --ort-threads 1)
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/run.log" || true
"$PY" bench/cifar10_real_teacher.py "${args[@]}" "$@" 2>&1 | tee -a "$OUT/run.log"
