"""The packed form of a clustered model and its honest size.

File layout (before entropy coding): ``DPCL1\\n`` + u32 header length + JSON header + tensors in
order. A clustered tensor is its codebook (k float32) + its indices bit-packed at ceil(log2 k)
bits each; every other tensor (biases, BatchNorm, unclustered layers) is stored raw. The whole
file is then entropy-coded with lzma or zlib. The reference is the same tensors stored dense in
fp32 (what a ``state_dict`` weighs).
"""

from __future__ import annotations

import json
import lzma
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from distillprune.core.io import atomic_write
from distillprune.errors import CompressionError

MAGIC = b"DPCL1\n"
XZ_MAGIC = b"\xfd7zXZ\x00"


def pack_bits(idx: np.ndarray, bits: int) -> bytes:
    b = ((idx.astype(np.int64)[:, None] >> np.arange(bits)) & 1).astype(np.uint8)
    return np.packbits(b.ravel(), bitorder="little").tobytes()


def unpack_bits(data: bytes, n: int, bits: int) -> np.ndarray:
    b = np.unpackbits(np.frombuffer(data, np.uint8), count=n * bits, bitorder="little").reshape(n, bits)
    return (b.astype(np.int64) << np.arange(bits)).sum(1)


def index_bits(k: int) -> int:
    return max(1, math.ceil(math.log2(k)))


def pack(state: dict[str, torch.Tensor], clustered: dict[str, int]) -> bytes:
    """Serialise ``state``; tensors named in ``clustered`` ({name: k}) as codebook + packed indices."""
    header: dict = {"format": "distillprune-cluster/1", "tensors": []}
    chunks: list[bytes] = []
    for name, t in state.items():
        t = t.detach().cpu()
        entry: dict = {"name": name, "shape": list(t.shape)}
        if name in clustered:
            k, bits = clustered[name], index_bits(clustered[name])
            values, inv = torch.unique(t.float().flatten(), return_inverse=True)
            if len(values) > 2**bits:
                raise CompressionError(f"cluster pack: '{name}' has {len(values)} distinct values, more than k={k}")
            book, packed = values.numpy().astype(np.float32).tobytes(), pack_bits(inv.numpy(), bits)
            entry.update(kind="clustered", k=k, bits=bits, codebook=len(values), nbytes=[len(book), len(packed)])
            chunks += [book, packed]
        else:
            arr = t.numpy()
            entry.update(kind="raw", dtype=str(arr.dtype), nbytes=[arr.nbytes])
            chunks.append(arr.tobytes())
        header["tensors"].append(entry)
    h = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + len(h).to_bytes(4, "little") + h + b"".join(chunks)


def unpack(blob: bytes) -> dict[str, torch.Tensor]:
    if blob[: len(XZ_MAGIC)] == XZ_MAGIC:
        blob = lzma.decompress(blob)
    elif blob[: len(MAGIC)] != MAGIC:
        try:
            blob = zlib.decompress(blob)
        except zlib.error:
            raise CompressionError("not a distillprune clustered-weights file") from None
    if blob[: len(MAGIC)] != MAGIC:
        raise CompressionError("not a distillprune clustered-weights file")
    n = int.from_bytes(blob[len(MAGIC) : len(MAGIC) + 4], "little")
    pos = len(MAGIC) + 4
    header = json.loads(blob[pos : pos + n])
    pos += n
    out = {}
    for e in header["tensors"]:
        count = math.prod(e["shape"])
        if e["kind"] == "clustered":
            nb, ni = e["nbytes"]
            book = np.frombuffer(blob[pos : pos + nb], np.float32)
            idx = unpack_bits(blob[pos + nb : pos + nb + ni], count, e["bits"])
            out[e["name"]] = torch.from_numpy(book[idx].reshape(e["shape"]).copy())
            pos += nb + ni
        else:
            (nb,) = e["nbytes"]
            arr = np.frombuffer(blob[pos : pos + nb], np.dtype(e["dtype"])).reshape(e["shape"])
            out[e["name"]] = torch.from_numpy(arr.copy())
            pos += nb
    return out


def encode(blob: bytes, codec: str) -> bytes:
    return lzma.compress(blob, preset=9 | lzma.PRESET_EXTREME) if codec == "lzma" else zlib.compress(blob, 9)


def dense_fp32(state: dict[str, torch.Tensor]) -> bytes:
    """The reference: every tensor raw, floating point ones as fp32."""
    return b"".join(
        (t.detach().cpu().float() if t.is_floating_point() else t.detach().cpu()).numpy().tobytes()
        for t in state.values()
    )


def sizes(state: dict[str, torch.Tensor], clustered: dict[str, int]) -> tuple[bytes, dict]:
    """(packed file, sizes): dense fp32 raw (the reference), the clustered values stored as fp32 then lzma
    (what a generic compressor alone achieves), packed raw, packed zlib, packed lzma, ratios."""
    blob = pack(state, clustered)
    dense = dense_fp32(state)
    z, x = len(encode(blob, "zlib")), len(encode(blob, "lzma"))
    info = {
        "dense_fp32_bytes": len(dense),
        "clustered_fp32_lzma_bytes": len(encode(dense, "lzma")),
        "packed_bytes": len(blob),
        "packed_zlib_bytes": z,
        "packed_lzma_bytes": x,
        "ratio_zlib": round(len(dense) / z, 2),
        "ratio_lzma": round(len(dense) / x, 2),
        "clustered_tensors": len(clustered),
        "clustered_params": int(sum(state[n].numel() for n in clustered)),
        "total_params": int(sum(t.numel() for t in state.values() if t.is_floating_point())),
    }
    return blob, info


def save_packed(
    path: str | Path, state: dict[str, torch.Tensor], clustered: dict[str, int], codec: str = "lzma"
) -> dict:
    """Write the entropy-coded packed file; returns its sizes (``file_bytes`` is what was written)."""
    blob, info = sizes(state, clustered)
    data = encode(blob, codec)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return {**info, "codec": codec, "file_bytes": len(data)}


def load_packed(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict back from a packed file (clustered tensors rebuilt from codebook + indices)."""
    p = Path(path)
    if not p.is_file():
        raise CompressionError(f"clustered-weights file not found: {p}")
    return unpack(p.read_bytes())
