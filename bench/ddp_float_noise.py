"""How far apart float noise alone puts two single-process runs of one recipe.

Two processes add per-rank partial sums where one process sums a whole batch, so their weights differ
from one process's by float rounding (~1e-6 relative per step, tests/distributed). This script runs a
recipe in ONE process several times, with the initial weights scaled by (1 + eps * N(0, 1)) for each
eps, and prints per run: each pruning history op's hash, the removed blocks, the top-1 of each stage,
and how far the first stage's weights (before any pruning) are from the eps = 0 run's (||w - w0|| / ||w0||
over all parameters and BN statistics). What differs here between runs that differ by 1e-6 cannot be asked to agree
between 1 and 2 processes.

    python bench/ddp_float_noise.py recipes/digits_ddp.yaml --set runtime.device=cpu --set runtime.threads=1 \\
        --set runtime.progress=false --set measure.enabled=false
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from distillprune.models import build_model
from distillprune.pipeline import execute
from distillprune.recipes import load_recipe


def run(recipe, eps: float, out: Path):  # type: ignore[no-untyped-def]
    """The recipe's model as the pipeline builds it (seeded), then scaled by (1 + eps * N(0, 1))."""
    from distillprune.data.sources import load_data

    data = load_data(recipe.data)
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model.name, data.num_classes, data.input_shape, **recipe.model.kwargs)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + eps * torch.randn(p.shape, generator=g))
    return execute(recipe, out, model=model, data=data, quiet=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="recipe override a.b=value")
    ap.add_argument("--eps", type=float, nargs="+", default=[0.0, 1e-6, -1e-6, 1e-5, -1e-5])
    args = ap.parse_args()
    recipe = load_recipe(args.recipe, args.sets)
    ref = None
    tmp = tempfile.TemporaryDirectory(prefix="dp-noise-")
    for i, eps in enumerate(args.eps):
        out = Path(tmp.name) / f"run{i}"
        st = run(recipe, eps, out)
        ops = [op.to_dict() for op in st.spec.history]
        first = sorted((out / "stages").iterdir())[0]
        sd = {k: v.float() for k, v in load_file(str(first / "model.safetensors")).items()}
        ref = ref or sd
        keys = [k for k in sd if not k.endswith("num_batches_tracked")]
        gap = float(
            torch.cat([(sd[k] - ref[k]).flatten() for k in keys]).norm()
            / torch.cat([ref[k].flatten() for k in keys]).norm()
        )
        print(
            json.dumps(
                {
                    "eps": eps,
                    "ops": [hashlib.sha256(json.dumps(o).encode()).hexdigest()[:6] for o in ops],
                    "blocks": [o["path"] for o in ops if o["op"] == "remove_block"],
                    "top1": [s.accuracy for s in st.report.stages],
                    f"{first.name}_weights_rel_gap": round(gap, 4),
                }
            )
        )
    tmp.cleanup()


if __name__ == "__main__":
    main()
