"""Property-based fuzzing of the CLI's promise: whatever recipe, ``--set`` string or data file a user hands
it, a command ends in exit 0 or exit 2, an exit 2 prints exactly one line on stderr (no traceback), and no
file outside the run folder is changed.

Hypothesis mutates a small valid recipe (keys removed, renamed or added; values replaced by other types,
paths, names; the YAML text truncated, corrupted, duplicated, made non-UTF-8), adds random ``--set``
strings, and damages the data file (truncation, wrong dtypes and shapes, NaN, labels out of range, empty
or missing arrays). Each example runs ``distillprune.cli.main`` in this process (a subprocess costs
seconds of imports; tests/cli/test_cli.py and test_interrupt.py run the real process) with stdout and
stderr captured at the file-descriptor level. Examples are bounded so the test stays well under 2 minutes.
"""

from __future__ import annotations

import copy
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from distillprune.cli import main

EXAMPLES = int(os.environ.get("DISTILLPRUNE_FUZZ_EXAMPLES", "60"))

BASE: dict[str, Any] = {
    "name": "fuzz",
    "seed": 0,
    "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
    "data": {"source": "npz", "path": "data.npz", "batch_size": 32, "eval_batch_size": 64},
    "runtime": {"progress": False, "tensorboard": False, "threads": 1},
    "measure": {"enabled": False, "batch_sizes": [1], "repeats": 1, "warmup": 0, "min_window_s": 0.001},
    "stages": [
        {"type": "train", "epochs": 1, "optimizer": {"lr": 0.05}},
        {"type": "prune", "width": {"ratio": 0.5, "round_to": 4}, "epochs_per_step": 0},
        {"type": "export", "filename": "model.onnx", "parity_samples": 8},
    ],
}
# other stage lists a mutation may swap in (each cheap on this data)
MORE_STAGES = [
    [
        {"type": "train", "epochs": 1},
        {"type": "distill", "epochs": 1, "student": {"name": "mlp", "kwargs": {"hidden": [8]}}},
    ],
    [{"type": "train", "epochs": 1}, {"type": "finetune", "epochs": 1, "distill": None}, {"type": "evaluate"}],
    [{"type": "train", "epochs": 1}, {"type": "quantize", "method": "dynamic", "min_agreement": 0.0}],
    [{"type": "train", "epochs": 1}, {"type": "cluster", "k": 16, "filename": "w.cluster"}],
]

PATHS = [
    "../escape.onnx",
    "../../escape",
    "/tmp/escape-distillprune-fuzz",
    "",
    ".",
    "stages",
    "report.json",
    "state.json",
    "sub/../../x",
    "a/b/c.onnx",
    "~/x",
    "data.npz",
    "recipe.yaml",
    "nul\x00l",
    "tb/x",
]
NAMES = [
    "mlp",
    "resnet",
    "digits_cnn",
    "resnet20",
    "npz",
    "digits",
    "kd",
    "l1",
    "taylor",
    "cuda",
    "cpu",
    "auto",
    "train",
    "prune",
    "export",
    "dynamic",
    "static",
    "fp16",
    "onecycle",
    "adamw",
    "prune ",
    "Mlp",
]
WEIRD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 6),
    st.sampled_from([0, -1, 2**31, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.text(max_size=8),
    st.lists(st.integers(-2, 40), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(0, 3), max_size=2),
    st.sampled_from(PATHS),
    st.sampled_from(NAMES),
)
# keys whose huge values a run honours at great cost (a billion epochs is a valid, endless request)
COSTLY = {
    "epochs",
    "epochs_per_step",
    "steps",
    "generations",
    "repeats",
    "warmup",
    "min_window_s",
    "parity_samples",
    "calib_samples",
    "bn_calib_samples",
    "k",
    "blocks",
    "hidden",
    "widths",
    "kwargs",
    "batch_sizes",
    "gpu_batch_size",
    "image_size",
    "samples",
    "iterations",
    "max_iter",
    "n_init",
    "num_samples",
}
YAML_NOISE = st.text(alphabet="[]{}:,'\"-#&*!|>%@`?\t\n abc019._/\\", max_size=12)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _parent(tree: Any, path: tuple) -> Any:
    for p in path[:-1]:
        tree = tree[p]
    return tree


@st.composite
def recipe_texts(draw: st.DrawFn, mutations: int, corrupt: bool) -> str:
    """A recipe's YAML text: the base with ``mutations`` structural changes, then (``corrupt``) damaged text."""
    r = copy.deepcopy(BASE)
    if draw(st.booleans()):
        r["stages"] = copy.deepcopy(draw(st.sampled_from([BASE["stages"], *MORE_STAGES])))
    for _ in range(mutations):
        path = draw(st.sampled_from(_paths(r)[1:]))
        parent, key = _parent(r, path), path[-1]
        op = draw(st.sampled_from(["replace", "replace", "delete", "rename", "add"]))
        if op == "delete":
            del parent[key]
        elif op == "rename" and isinstance(key, str):
            parent[key + draw(st.sampled_from(["s", "_", "x"]))] = parent.pop(key)
        elif op == "add" and isinstance(parent[key], dict):
            parent[key][draw(st.sampled_from(["extra", "epochs", "ratio", "filename", "path", "name", "type"]))] = draw(
                WEIRD
            )
        else:
            value = draw(WEIRD)
            if str(key) in COSTLY and isinstance(value, (int, float)) and abs(value) > 6:
                value = 2
            parent[key] = value
    text = yaml.safe_dump(r, sort_keys=False)
    corruption = draw(st.sampled_from(["truncate", "insert", "duplicate", "binary", "tab"])) if corrupt else "none"
    at = draw(st.integers(0, max(len(text) - 1, 0)))
    if corruption == "truncate":
        text = text[:at]
    elif corruption == "insert":
        text = text[:at] + draw(YAML_NOISE) + text[at:]
    elif corruption == "duplicate":
        lines = text.splitlines(keepends=True)
        i = draw(st.integers(0, len(lines) - 1))
        text = "".join(lines[: i + 1] + [lines[i]] + lines[i + 1 :])
    elif corruption == "tab":
        text = text.replace("  ", "\t", 1)
    elif corruption == "binary":
        return text[:at] + "\udcff" + text[at:]  # written with surrogateescape: a lone 0xff byte
    return text


SET_KEYS = [
    "stages.0.epochs",
    "stages.1.width.ratio",
    "stages.1.width.round_to",
    "stages.2.filename",
    "model.name",
    "model.kwargs.hidden",
    "data.path",
    "data.batch_size",
    "data.limit_train",
    "runtime.device",
    "seed",
    "stages.0.optimizer.lr",
    "stages",
    "stages.9.x",
    "stages.x",
    "model..name",
    "",
    "data.labels",
    "stages.1.width.max_ratio",
    "stages.0.type",
    "measure.threads",
    "runtime.threads",
]


@st.composite
def set_args(draw: st.DrawFn, count: int) -> list[str]:
    out: list[str] = []
    for _ in range(count):
        key = draw(st.one_of(st.sampled_from(SET_KEYS), st.text(max_size=10)))
        value = draw(
            st.one_of(
                YAML_NOISE, st.sampled_from([str(v) for v in (*PATHS, *NAMES)] + ["1e30", "-1", "0.99", "null", "[]"])
            )
        )
        if key in ("stages.0.epochs", "data.limit_train") and value.strip().lstrip("-").isdigit():
            value = str(max(-1, min(int(value.strip()), 3)))
        out += ["--set", f"{key}{draw(st.sampled_from(['=', '=', '', '==']))}{value}"]
    return out


@st.composite
def data_files(draw: st.DrawFn, damaged: bool) -> tuple[str, dict[str, Any] | bytes | None]:
    """How the data file is damaged (``good`` unless ``damaged``), and its arrays (or raw bytes)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    arrays: dict[str, Any] = {
        "x_train": rng.random((96, 1, 4, 4), dtype=np.float32),
        "y_train": rng.integers(0, 4, 96),
        "x_test": rng.random((24, 1, 4, 4), dtype=np.float32),
        "y_test": rng.integers(0, 4, 24),
    }
    kind = (
        draw(
            st.sampled_from(
                [
                    "truncate",
                    "flip",
                    "flip",
                    "text",
                    "dtype",
                    "dtype",
                    "nan",
                    "nan",
                    "labels",
                    "labels",
                    "empty",
                    "shape",
                    "missing",
                    "length",
                    "uint8",
                ]
            )
        )
        if damaged
        else "good"
    )
    key = draw(st.sampled_from(sorted(arrays)))
    if kind == "dtype":
        arrays[key] = draw(
            st.sampled_from(
                [
                    np.array(["a"] * len(arrays[key])),
                    arrays[key].astype(np.complex64),
                    arrays[key].astype(np.float16),
                    arrays[key].astype(bool),
                    arrays[key].astype(np.float64) + 0.5,
                    np.zeros(len(arrays[key]), "datetime64[s]"),
                ]
            )
        )
    elif kind == "nan":
        a = arrays[key].astype(np.float32)
        a.reshape(-1)[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        arrays[key] = a
    elif kind == "labels":
        y = "y_train" if key.startswith("x") else key
        arrays[y][draw(st.integers(0, len(arrays[y]) - 1))] = draw(st.sampled_from([-1, -(2**40), 4, 2**40, 10**6]))
    elif kind == "empty":
        arrays[key] = arrays[key][:0]
    elif kind == "shape":
        arrays[key] = draw(
            st.sampled_from(
                [
                    np.float32(1.0),
                    arrays[key].reshape(len(arrays[key]), -1)[:, :, None, None, None],
                    np.zeros((len(arrays[key]), 0), np.float32),
                    arrays[key][:, None],
                ]
            )
        )
    elif kind == "missing":
        del arrays[key]
    elif kind == "length":
        arrays[key] = arrays[key][: len(arrays[key]) // 2]
    elif kind == "uint8":
        arrays["x_train"] = (arrays["x_train"] * 255).astype(np.uint8)
        arrays["x_test"] = (arrays["x_test"] * 255).astype(np.uint8)
    if kind == "flip":  # overwrite a few bytes anywhere: headers, member data, the zip directory
        return kind, (arrays, draw(st.integers(0, 10**6)), draw(st.binary(min_size=1, max_size=8)))
    if kind in ("truncate", "text"):
        return kind, draw(st.integers(0, 4000)) if kind == "truncate" else b"x_train,y_train\n1,2\n"
    return kind, arrays


def _snapshot(root: Path, skip: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p == skip or skip in p.parents or not p.is_file():
            continue
        out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _write_data(folder: Path, spec: tuple[str, Any]) -> None:
    kind, payload = spec
    f = folder / "data.npz"
    if kind == "text":
        f.write_bytes(payload)
        return
    if kind == "flip":
        arrays, at, junk = payload
        np.savez(f, **arrays)
        raw = bytearray(f.read_bytes())
        at %= len(raw)
        raw[at : at + len(junk)] = junk
        f.write_bytes(bytes(raw))
        return
    if kind == "truncate":
        arrays = {
            "x_train": np.zeros((96, 1, 4, 4), np.float32),
            "y_train": np.zeros(96, np.int64),
            "x_test": np.zeros((24, 1, 4, 4), np.float32),
            "y_test": np.zeros(24, np.int64),
        }
        np.savez(f, **arrays)
        f.write_bytes(f.read_bytes()[:payload])
        return
    np.savez(f, **payload)


@pytest.mark.slow
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=False,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
@given(st.data())
def test_every_cli_run_ends_in_0_or_one_error_line(capfd, draw):
    # one family of faults per example (sometimes two), so most examples get past the recipe into the run
    faults = draw.draw(
        st.lists(
            st.sampled_from(["recipe", "recipe", "recipe", "text", "set", "set", "data", "data", "data", "command"]),
            min_size=0,
            max_size=2,
        ),
        "faults",
    )
    text = draw.draw(recipe_texts(faults.count("recipe"), "text" in faults), "recipe")
    sets = draw.draw(set_args(faults.count("set")), "sets")
    data = draw.draw(data_files("data" in faults), "data")
    command = draw.draw(
        st.sampled_from(["validate", "resume", "out-is-file"])
        if "command" in faults
        else st.sampled_from(["run", "run", "run", "validate"]),
        "command",
    )
    threads = torch.get_num_threads()
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="dp-fuzz-") as tmp:
        root = Path(tmp)
        (root / "recipe.yaml").write_bytes(text.encode("utf-8", "surrogateescape"))
        _write_data(root, data)
        out = root / "run"
        if command == "out-is-file":
            out.write_text("not a folder")
        args = {
            "run": ["run", "recipe.yaml", *sets, "--out", "run"],
            "validate": ["validate", "recipe.yaml", *sets],
            "resume": ["run", "recipe.yaml", *sets, "--out", "run", "--resume"],
            "out-is-file": ["run", "recipe.yaml", *sets, "--out", "run"],
        }[command]
        before = _snapshot(root, out)
        capfd.readouterr()
        os.chdir(root)
        try:
            code = main(args)
        finally:
            os.chdir(cwd)
            torch.set_num_threads(threads)
        captured = capfd.readouterr()
        after = _snapshot(root, out)
        escaped = Path("/tmp/escape-distillprune-fuzz")
        assert not escaped.exists(), "a recipe path escaped to /tmp"
    event(f"exit {code}: {' '.join(captured.err.replace(str(root), '').split()[1:4]) if code else 'ok'}")
    context = (
        f"args={args}\ndata={data[0]}\nrecipe:\n{text}\nstderr:\n{captured.err}\nstdout tail:\n{captured.out[-2000:]}"
    )
    assert code in (0, 2), context
    assert "Traceback" not in captured.err, context
    if code == 2:
        lines = [ln for ln in captured.err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), context
    assert before == after, f"files outside the run folder changed\n{context}"
