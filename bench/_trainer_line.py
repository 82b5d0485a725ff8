"""The trainer line: images/s of distillprune's KD fine-tuning against a plain eager PyTorch KD loop,
same teacher, same student, same batch, same data, measured in alternating rounds in one run.

- plain: the loop a user writes first: host-side normalise + one random crop and flip per batch,
  ``with torch.no_grad(): t = teacher(x)``, student forward/backward, SGD; fp32, NCHW, eager.
- distillprune: ``train.fit`` with the library's ``Distiller`` (Hinton KD): the teacher runs as a
  BatchNorm-folded, checked copy (channels-last where safe), batched per-sample crop + flip.
- distillprune, teacher unfolded (``fold_teacher=False``): the same trainer without the fast
  teacher, to show what the fold itself buys.
- optionally (``compile``) the teacher under ``torch.compile``: its compile time is reported apart.

Every variant's rate includes its first step (each round restarts it); one warm-up round is dropped
(``warmup=False`` skips it: the quick mode, which claims nothing). On a GPU (``runtime.compile``)
distillprune's variants run two epochs and report the second, after compilation; the plain loop has
nothing to compile; the teacher-unfolded variant is left out there (``unfolded=False``).
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from _common import HINTON_KD, kd_finetune
from torch import nn

from distillprune.data.base import DataBundle
from distillprune.distill.fast_teacher import fast_teacher
from distillprune.train import RuntimeConfig


def plain_kd_images_per_s(
    teacher: nn.Module, student: nn.Module, data: DataBundle, batch_size: int, steps: int, lr: float, seed: int = 0
) -> float:
    t_, alpha = HINTON_KD["temperature"], HINTON_KD["alpha"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher = teacher.to(device).eval()
    student = student.to(device).train()
    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x_all, y_all = data.train.x, data.train.y
    mean, std = data.mean.view(1, -1, 1, 1), data.std.view(1, -1, 1, 1)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(x_all), (batch_size,), generator=gen)
        x = (x_all[idx].float() / 255.0 - mean) / std
        x = F.pad(x, (4, 4, 4, 4))
        i, j = torch.randint(0, 9, (2,), generator=gen).tolist()
        x = x[:, :, i : i + x_all.shape[2], j : j + x_all.shape[3]]
        if torch.rand((), generator=gen) < 0.5:
            x = x.flip(3)
        x, y = x.to(device, non_blocking=True), y_all[idx].to(device, non_blocking=True)
        with torch.no_grad():
            t = teacher(x)
        s = student(x)
        kd = (
            F.kl_div(F.log_softmax(s / t_, 1), F.log_softmax(t / t_, 1), log_target=True, reduction="batchmean")
            * t_
            * t_
        )
        loss = alpha * kd + (1 - alpha) * F.cross_entropy(s, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - t0)


@torch.no_grad()
def teacher_forward_ms(teacher: nn.Module, shape: tuple[int, ...], batch_size: int, pairs: int) -> dict[str, float]:
    """The teacher's eval forward at ``batch_size``: eager against the fast copy, back to back."""
    x = torch.randn(batch_size, *shape)
    fast, _, speed = fast_teacher(teacher, [], x[:2])
    eager_ms, fast_ms = [], []
    for i in range(pairs + 1):
        for fn, sink in ((teacher, eager_ms), (fast, fast_ms)) if i % 2 else ((fast, fast_ms), (teacher, eager_ms)):
            t0 = time.perf_counter()
            fn(x)
            if i:  # the first pair warms up
                sink.append((time.perf_counter() - t0) * 1e3)
    return {
        "eager_ms": statistics.median(eager_ms),
        "fast_ms": statistics.median(fast_ms),
        "folded": len(speed.folded),
        "channels_last": speed.channels_last,
    }


def trainer_line(
    teacher: nn.Module,
    student: nn.Module,
    data: DataBundle,
    *,
    batch_size: int,
    steps: int,
    rounds: int,
    lr: float,
    runtime: RuntimeConfig,
    compile_teacher: bool = False,
    teacher_name: str = "teacher",
    warmup: bool = True,
    unfolded: bool = True,
) -> dict[str, Any]:
    sub = copy.copy(data)
    sub.train = data.train.subset(steps * batch_size)
    sub.test = data.test.subset(batch_size)  # the trainer evaluates after its epoch: keep that negligible

    # on a GPU the trainer compiles the student in its first epoch: time the second one there
    epochs = 2 if runtime.compile else 1

    def ours(**speed: bool) -> float:
        return kd_finetune(
            copy.deepcopy(student), teacher, sub, epochs=epochs, lr=lr, batch_size=batch_size, runtime=runtime, **speed
        )["img_s_last_epoch"]

    variants = {
        "plain": lambda: plain_kd_images_per_s(teacher, copy.deepcopy(student), sub, batch_size, steps, lr),
        "distillprune": lambda: ours(),
    }
    if unfolded:
        variants["distillprune_unfolded"] = lambda: ours(fold_teacher=False)
    compile_s = None
    if compile_teacher:
        t0 = time.perf_counter()
        ours(compile_teacher=True)  # the first run compiles (its rate is not kept)
        compile_s = time.perf_counter() - t0
        variants["distillprune_compiled_teacher"] = lambda: ours(compile_teacher=True)
    rates: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    first = 0 if warmup else 1
    for r in range(first, rounds + 1):  # round 0 warms up every variant and is dropped
        for k in names if r % 2 == 0 else names[::-1]:
            v = variants[k]()
            if r:
                rates[k].append(v)
    med = {k: statistics.median(v) for k, v in rates.items()}
    per_round = [d / p for d, p in zip(rates["distillprune"], rates["plain"], strict=True)]
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    return {
        "teacher": teacher_name,
        "batch": batch_size,
        "steps": steps,
        "rounds": rounds,
        "img_s": med,
        "rounds_img_s": rates,
        "ratio": med["distillprune"] / med["plain"],
        "ratio_min": min(per_round),
        "ratio_max": max(per_round),
        "teacher_compile_s": compile_s,
        "threads": torch.get_num_threads(),
        "teacher_forward": None
        if torch.cuda.is_available()  # a CPU breakdown; the GPU rates say enough
        else teacher_forward_ms(teacher.cpu(), tuple(data.input_shape), batch_size, max(rounds, 3)),
    }


def render_trainer_line(r: dict[str, Any], student: str) -> str:
    ips = r["img_s"]
    tf = r.get("teacher_forward")
    parts = [f"plain eager KD loop {ips['plain']:.1f} img/s", f"distillprune {ips['distillprune']:.1f} img/s"]
    if "distillprune_unfolded" in ips:
        parts.append(f"distillprune with the teacher unfolded {ips['distillprune_unfolded']:.1f} img/s")
    if "distillprune_compiled_teacher" in ips:
        parts.append(
            f"distillprune with torch.compile'd teacher {ips['distillprune_compiled_teacher']:.1f} img/s "
            f"(+{r['teacher_compile_s']:.0f} s compiling)"
        )
    return (
        f"Trainer line ({r.get('teacher', 'teacher')} teacher, student: {student}; batch {r['batch']}, "
        f"{r['steps']} steps x {r['rounds']} alternating rounds, {r['threads']} torch threads): "
        + "; ".join(parts)
        + f". distillprune / plain: **{r['ratio']:.2f}x** (per round {r['ratio_min']:.2f}-{r['ratio_max']:.2f})."
        + (
            ""
            if not tf
            else f" Teacher forward at batch {r['batch']}: eager {tf['eager_ms']:.0f} ms, folded "
            f"copy {tf['fast_ms']:.0f} ms ({tf['folded']} BatchNorms folded, channels-last: "
            f"{tf['channels_last']})."
        )
    )
