"""Weight files that lie: a pickle that would run code (``weights_only=True`` refuses it: one line, never
torch's advice to load it with ``weights_only=False``), in a ``weights:`` file or as the only weights of a
Hugging Face folder; safetensors in float8 or with a tensor name given twice."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from hostile_helpers import refused, write_recipe
from safetensors.torch import save_file

from distillprune.core.checkpoint import load_checkpoint, save_checkpoint
from distillprune.errors import CheckpointError
from distillprune.models.build import make_model
from distillprune.models.weights import read_state_dict


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def evil_pickle(path: Path, marker: Path, zipped: bool = True) -> Path:
    """A file ``torch.load`` would open, whose unpickling creates ``marker``: a torch zip archive whose
    ``data.pkl`` is the malicious pickle, or the bare pickle (the legacy format)."""
    payload = pickle.dumps({"fc.weight": _Evil(marker)}, protocol=2)
    if not zipped:
        path.write_bytes(payload)
        return path
    buf = io.BytesIO()
    torch.save({"fc.weight": torch.zeros(1)}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        files = {n: z.read(n) for n in z.namelist()}
    files[next(n for n in files if n.endswith("data.pkl"))] = payload
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt"])
@pytest.mark.parametrize("zipped", [True, False])
def test_a_malicious_pickle_as_weights_never_runs(tmp_path, capsys, suffix, zipped):
    marker = tmp_path / "MARKER"
    weights = evil_pickle(tmp_path / f"w{suffix}", marker, zipped)
    recipe = write_recipe(
        tmp_path / "r.yaml", model={"name": "mlp", "kwargs": {"hidden": [16]}, "weights": str(weights)}
    )
    line = refused(capsys, "run", recipe, "--out", tmp_path / "run", match="weights_only=True")
    assert not marker.exists() and "set to `False`" not in line and "never unpickled" in line


def test_a_malicious_pickle_as_an_hf_folders_weights_never_runs(tmp_path, capsys):
    pytest.importorskip("transformers")
    from distillprune.transformers.testing import tiny_bert_folder, tiny_sentiment

    marker = tmp_path / "MARKER"
    folder = tiny_bert_folder(tmp_path / "hf", num_labels=2)
    (folder / "model.safetensors").unlink()
    evil_pickle(folder / "pytorch_model.bin", marker)
    data = tiny_sentiment(tmp_path / "data", n_train=32, n_test=16)
    recipe = write_recipe(
        tmp_path / "r.yaml",
        model={"source": "hf", "path": str(folder), "task": "sequence-classification"},
        data={"source": "text", "path": str(data), "text": {"max_length": 16}, "batch_size": 16},
        stages=[{"type": "evaluate"}],
    )
    line = refused(capsys, "run", recipe, "--out", tmp_path / "run", match="weights_only=True")
    assert not marker.exists() and "set to `False`" not in line


def _duplicate_names(path: Path) -> Path:
    """A safetensors file whose header names the tensor 'fc.weight' twice (the reader keeps one of them)."""
    a, b = torch.zeros(10, 16).numpy().tobytes(), torch.ones(10, 16).numpy().tobytes()
    entry = '{{"dtype": "F32", "shape": [10, 16], "data_offsets": [{}, {}]}}'
    header = f'{{"fc.weight": {entry.format(0, len(a))}, "fc.weight": {entry.format(len(a), len(a) + len(b))}}}'
    raw = header.encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + a + b)
    return path


@pytest.mark.parametrize("case", ["float8", "duplicate"])
def test_safetensors_that_lie_are_one_line(tmp_path, capsys, case):
    path = tmp_path / "w.safetensors"
    if case == "float8":
        save_file({"fc.weight": torch.zeros(10, 16).to(torch.float8_e4m3fn)}, str(path))
        match = "dtype 'F8_E4M3'"
    else:
        _duplicate_names(path)
        match = "'fc.weight' appears twice"
    with pytest.raises(CheckpointError, match=match) as err:
        read_state_dict(path)
    assert "\n" not in str(err.value)
    recipe = write_recipe(tmp_path / "r.yaml", model={"name": "mlp", "kwargs": {"hidden": [16]}, "weights": str(path)})
    refused(capsys, "run", recipe, "--out", tmp_path / "run", match=match)


def test_a_checkpoint_whose_weights_are_float8_is_one_line(tmp_path):
    model, spec = make_model({"name": "mlp", "kwargs": {"hidden": [16]}}, 10, (1, 8, 8))
    save_checkpoint(tmp_path / "ck", model, spec)
    state = {k: v.to(torch.float8_e5m2) for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "ck" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="F8_E5M2"):
        load_checkpoint(tmp_path / "ck")
    pickled = {k: v.to(torch.float8_e4m3fn) for k, v in model.state_dict().items()}
    torch.save(pickled, tmp_path / "w.pt")  # float8 tensors load with weights_only=True: refused by dtype
    with pytest.raises(CheckpointError, match="float8_e4m3fn"):
        read_state_dict(tmp_path / "w.pt")
    assert json.loads((tmp_path / "ck" / "model.json").read_text())["format"] == "distillprune/1"
