"""Text sources: local CSV / JSONL / TXT / fortune files (and ``datasets`` folders with a text column),
tokenised once with a Hugging Face tokenizer into resident int64 tensors (``core.batch.NamedInputs``).

Texts are tokenised to at most ``text.max_length`` tokens and padded to the longest text of the data set;
each training batch is then cut to its own longest text (dynamic padding). Without a label column the data
is label-free (``num_classes`` 0): distil from a teacher with a label-free loss (``embedding``, ``kd``...).
"""

from __future__ import annotations

import csv
import fnmatch
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distillprune.core.batch import NamedInputs
from distillprune.core.io import loads, resolve_folder
from distillprune.core.trust import hf_options
from distillprune.data.base import DataBundle, Split
from distillprune.data.config import DataConfig, TextConfig, path_not_found
from distillprune.errors import DataError
from distillprune.registries import SOURCES

SUFFIX = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "txt"}
Rows = list[dict[str, Any]]


def _format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    return SUFFIX.get(path.suffix.lower(), "fortune" if not path.suffix else "txt")


def read_rows(path: Path, cfg: TextConfig) -> Rows:
    """``[{column: text, ...}]`` of one file."""
    fmt = _format(path, cfg.format)
    try:
        raw = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    if fmt == "txt":
        return [{cfg.column: line} for line in raw.splitlines() if line.strip()]
    if fmt == "fortune":  # entries separated by lines holding a single '%'
        return [{cfg.column: e} for e in re.split(r"^%\s*$", raw, flags=re.M) if e.strip()]
    rows = _csv_rows(path, raw) if fmt == "csv" else _jsonl_rows(path, raw)
    if rows and cfg.column not in rows[0]:
        raise DataError(f"{path}: no text column {cfg.column!r} (columns: {sorted(rows[0])}); set data.text.column")
    if rows and cfg.pair_column and cfg.pair_column not in rows[0]:
        raise DataError(f"{path}: no column {cfg.pair_column!r} for data.text.pair_column")
    return rows


def _csv_rows(path: Path, raw: str) -> Rows:
    """The rows of a CSV file; a row with fewer or more fields than the header is an error (``csv`` would
    fill the missing ones with None, read later as the label 'None')."""
    reader = csv.DictReader(raw.splitlines(), restkey="\0extra")
    rows = []
    for row in reader:
        extra = row.pop("\0extra", None) or []
        if extra or None in row.values():
            n = sum(v is not None for v in row.values()) + len(extra)
            raise DataError(
                f"{path}:{reader.line_num}: {n} fields, but the header names {len(reader.fieldnames or [])} "
                f"({', '.join(reader.fieldnames or [])})"
            )
        rows.append(row)
    return rows


def _jsonl_rows(path: Path, raw: str) -> Rows:
    """The rows of a JSON-lines file: one JSON object per line."""
    rows = []
    for i, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i}: not a JSON line ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{i}: a JSON {type(row).__name__}, expected an object {{column: value, ...}}")
        rows.append(row)
    return rows


def _clean(rows: Rows, cfg: TextConfig) -> Rows:
    """Whitespace collapsed; split into sentences if asked; too short / too long texts and exact duplicates
    dropped (order kept)."""
    out, seen = [], set()
    if cfg.sentences:
        rows = [
            {**r, cfg.column: piece}
            for r in rows
            for piece in re.split(r"(?<=[.!?])\s+", " ".join(str(r.get(cfg.column, "")).split()))
        ]
    for r in rows:
        t = " ".join(str(r.get(cfg.column, "")).split())
        if len(t) < cfg.min_chars or (cfg.max_chars and len(t) > cfg.max_chars):
            continue
        key = (t, str(r.get(cfg.pair_column, "")) if cfg.pair_column else "")
        if key in seen:
            continue
        seen.add(key)
        out.append({**r, cfg.column: t})
    return out


def _files(folder: Path, cfg: TextConfig) -> list[Path]:
    # fortune folders hold index files (.dat) and .u8 symlinks to the same texts: regular text files only
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and not p.is_symlink()
        and p.suffix != ".dat"
        and any(fnmatch.fnmatchcase(p.name, pat) for pat in cfg.files)
    )


def read_splits(cfg: DataConfig) -> tuple[Rows, Rows]:
    """(train rows, test rows): ``train.*``/``test.*`` in a folder, else every file, split by test_fraction."""
    if not cfg.path:
        raise DataError("data source 'text' needs data.path (a file or a folder)")
    p = Path(cfg.path).expanduser()
    if not p.exists():
        raise DataError(path_not_found(cfg, p))
    t = cfg.text
    if p.is_dir():
        pairs = {
            s: next((f for f in sorted(p.glob(f"{s}.*")) if f.suffix.lower() in SUFFIX), None)
            for s in ("train", "test")
        }
        if pairs["train"] and pairs["test"]:
            return _clean(read_rows(pairs["train"], t), t), _clean(read_rows(pairs["test"], t), t)
        files = _files(p, t)
        if not files:
            raise DataError(f"{p}: no text files matching {t.files}")
        rows = [r for f in files for r in read_rows(f, t)]
    else:
        rows = read_rows(p, t)
    rows = _clean(rows, t)
    if len(rows) < 2:
        raise DataError(f"{p}: {len(rows)} usable text(s); need at least 2 (check data.text.min_chars/max_chars)")
    perm = np.random.default_rng(cfg.seed).permutation(len(rows))
    n_test = max(1, int(round(cfg.test_fraction * len(rows))))
    test, train = sorted(perm[:n_test]), sorted(perm[n_test:])
    return [rows[i] for i in train], [rows[i] for i in test]


def load_tokenizer(cfg: TextConfig) -> Any:
    if not cfg.tokenizer:
        raise DataError(
            "text data needs a tokenizer: data.text.tokenizer (defaults to model.path when model.source is hf)"
        )
    folder = resolve_folder(cfg.tokenizer, "data.text.tokenizer")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise DataError("text data needs the optional extra: pip install 'distillprune[hf]'") from None
    opts = hf_options(folder, "data.text.tokenizer")  # no code from the folder without --trust-code, no prompt
    try:
        return AutoTokenizer.from_pretrained(str(folder), **opts)
    except (OSError, ValueError) as e:
        raise DataError(f"data.text.tokenizer {folder}: cannot load a tokenizer ({str(e).splitlines()[0]})") from None


def tokenize(tok: Any, texts: list[str], pairs: list[str] | None, max_length: int) -> dict[str, torch.Tensor]:
    enc = tok(texts, pairs, truncation=True, max_length=max_length, padding="longest", return_tensors="pt")
    out = {k: v.long() for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    if "attention_mask" not in out:
        raise DataError("the tokenizer returned no attention_mask")
    return out


def _pad(t: dict[str, torch.Tensor], length: int) -> dict[str, torch.Tensor]:
    return {
        k: torch.nn.functional.pad(v, (0, length - v.shape[1]), value=0) if v.shape[1] < length else v
        for k, v in t.items()
    }


def _labels(train: Rows, test: Rows, column: str) -> tuple[torch.Tensor | None, torch.Tensor | None, list[str]]:
    if not train or column not in train[0]:
        return None, None, []
    values = ["" if r.get(column) is None else str(r[column]).strip() for r in train + test]
    if any(v == "" for v in values):  # missing, empty or null (JSON null is no label, not the label 'None')
        n = sum(v == "" for v in values)
        raise DataError(f"{n} of {len(values)} texts have no {column!r} label (missing, empty or null)")
    if all(re.fullmatch(r"\d+", v) for v in values):  # class indices 0..K-1
        classes = [str(i) for i in range(max(int(v) for v in values) + 1)]
        values = [str(int(v)) for v in values]
    else:
        classes = sorted(set(values))
    index = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([index[v] for v in values], dtype=torch.long)
    return y[: len(train)], y[len(train) :], classes


def bundle_of_rows(train: Rows, test: Rows, cfg: DataConfig, name: str) -> DataBundle:
    """Tokenise train and test rows into a DataBundle (inputs padded to the same length)."""
    t = cfg.text
    if not train or not test:
        raise DataError(f"text data {name}: {len(train)} training and {len(test)} test texts; need both")
    tok = load_tokenizer(t)
    enc = []
    for rows in (train, test):
        texts = [str(r[t.column]) for r in rows]
        pairs = [str(r[t.pair_column]) for r in rows] if t.pair_column else None
        enc.append(tokenize(tok, texts, pairs, t.max_length))
    length = max(e["input_ids"].shape[1] for e in enc)
    ytr, yte, classes = _labels(train, test, t.label_column)
    tr, te = (NamedInputs(_pad(e, length)) for e in enc)
    mean, std = torch.zeros(0), torch.ones(0)
    return DataBundle(Split(tr, ytr), Split(te, yte), len(classes), classes, mean, std, name)


@SOURCES.register("text")
def text(cfg: DataConfig) -> DataBundle:
    """Local text: a CSV / JSONL / TXT / fortune file split by test_fraction, or a folder with train.* and
    test.* (or of text files), tokenised with data.text.tokenizer; label column optional (label-free)."""
    train, test = read_splits(cfg)
    return bundle_of_rows(train, test, cfg, Path(cfg.path or "text").stem)


def hf_text(cfg: DataConfig, dd: Any) -> DataBundle:
    """A ``datasets`` DatasetDict (train/test) with a text column, tokenised like the ``text`` source."""
    rows = {s: dd[s].to_list() for s in ("train", "test")}
    t = cfg.text
    for s, r in rows.items():
        if r and t.column not in r[0]:
            raise DataError(f"{cfg.path} [{s}]: no text column {t.column!r} (columns: {sorted(r[0])})")
    return bundle_of_rows(_clean(rows["train"], t), _clean(rows["test"], t), cfg, cfg.name or "hf")
