"""How much each step keeps: every schedule is a function of the groups' sizes (and scores) returning what they
keep. :func:`uniform_keep` is a ``width.ratio`` step (Torch-Pruning's ``BasePruner`` rules, kept so a recipe cuts
what it always cut, with nearest rounding: rounding down would halve a 16-channel layer at any ratio above
1/16); :func:`planned_keep` a plan's share per step; :func:`encoder_heads_keep` / :func:`encoder_neurons_keep`
an encoder's layers; :func:`cubic_sparsity` the unstructured schedule (Zhu & Gupta 2017)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from distillprune.prune.channels import Group


def nearest(kept: int, step: int) -> int:
    """``kept`` rounded to the nearest multiple of ``step``, at least one ``step``."""
    return max(step, int(kept / step + 0.5) * step)


def step_ratio(ratio: float, k: int, steps: int) -> float:
    """The share of the initial width removed once step ``k`` (from 0) of ``steps`` is done (linear)."""
    return ratio * (k + 1) / steps


@dataclass
class Initial:
    """The groups' widths when a uniform schedule first met them (root -> channels), and the units ranked
    together at the first step (global ranking)."""

    sizes: dict[str, int] = field(default_factory=dict)
    units: int | None = None

    def see(self, groups: Sequence[Group], max_ratio: float) -> list[Group]:
        """Record the groups met for the first time; returns those a step may still cut."""
        for g in groups:
            self.sizes.setdefault(g.root, g.size)
        live = [g for g in groups if g.size >= 2 and not g.size < self.sizes[g.root] * (1 - max_ratio)]
        if self.units is None:
            self.units = sum(g.size // g.unit for g in live)
        return live


def _rounded(g: Group, kept_units: int) -> int:
    """Channels kept when ``g`` keeps ``kept_units`` units, rounded to its step."""
    return min(g.size, nearest(kept_units * g.unit, g.step))


def uniform_keep(
    groups: Sequence[Group], initial: Initial, ratio: float, max_ratio: float, global_ranking: bool = False
) -> dict[str, int]:
    """Channels each group keeps once ``ratio`` of the initial widths is removed (step ``k`` of a linear schedule:
    :func:`step_ratio`); a group missing from the result keeps all it has. The kept units (channels, a position
    of every block of a grouped conv, heads) are rounded to the nearest multiple of the group's step, at least
    one step; a group already below ``1 - max_ratio`` of its initial width is not cut further. With
    ``global_ranking`` the lowest normalised unit scores of all groups go until the share is met."""
    live = initial.see(groups, max_ratio)
    if global_ranking:
        return _ranked_keep(live, initial, ratio)
    keep = {}
    for g in live:
        target = int(initial.sizes[g.root] // g.unit * (1 - ratio))  # units
        if g.size // g.unit - target > 0:
            keep[g.root] = _rounded(g, target)
    return keep


def _ranked_keep(live: Sequence[Group], initial: Initial, ratio: float) -> dict[str, int]:
    """Global ranking: the lowest normalised unit scores over all groups go until ``ratio`` of the units first
    ranked is removed; each group's count rounded to its step."""
    if not live:
        return {}
    scores = torch.cat([g.units for g in live if g.units is not None])
    assert initial.units is not None
    n = len(scores) - int(initial.units * (1 - ratio))
    if n <= 0:
        return {}
    threshold = torch.topk(scores, k=n, largest=False).values[-1]
    keep = {}
    for g in live:
        assert g.units is not None
        gone = int((g.units <= threshold).sum())
        if gone:
            keep[g.root] = _rounded(g, g.size // g.unit - gone)
    return keep


def planned_keep(widths: dict[str, list[int]], k: int, steps: int, round_to: int) -> dict[str, int]:
    """Channels each group keeps after step ``k`` of a plan: the share ``(k + 1) / steps`` of the way from its
    width to the planned one (``widths``: root -> [kept, original]), rounded to ``round_to``; all of it on the
    last step."""
    frac, keep = (k + 1) / steps, {}
    for root, (kept, size) in widths.items():
        want = size - (size - kept) * frac
        keep[root] = kept if k + 1 == steps else max(kept, int(round(want / round_to)) * round_to)
    return keep


def encoder_heads_keep(
    scores: Sequence[torch.Tensor],
    base: Sequence[int],
    current: Sequence[int],
    ratio: float,
    minimum: int = 1,
    global_ranking: bool = True,
) -> dict[int, list[int]]:
    """The heads each encoder layer keeps (layer -> kept indices, only the layers that lose some) when ``ratio``
    of the layers' initial heads (``base``) are removed: ranked across layers (the lowest-scored go first, every
    layer keeping ``minimum``) or the same share in every layer."""
    if not global_ranking:
        plan = {}
        for li, (b, c) in enumerate(zip(base, current, strict=True)):
            k = max(minimum, round(b * (1 - ratio)))
            if k < c:
                plan[li] = sorted(int(i) for i in torch.argsort(scores[li], descending=True)[:k])
        return plan
    remove = sum(current) - max(minimum * len(current), round(sum(base) * (1 - ratio)))
    ranked = sorted((float(s), li, h) for li, sc in enumerate(scores) for h, s in enumerate(sc))
    counts = list(current)
    gone: dict[int, set[int]] = {}
    for _s, li, h in ranked:
        if remove <= 0:
            break
        if counts[li] > minimum:
            gone.setdefault(li, set()).add(h)
            counts[li] -= 1
            remove -= 1
    return {li: [h for h in range(current[li]) if h not in g] for li, g in gone.items()}


def encoder_neurons_keep(
    scores: Sequence[torch.Tensor],
    base: Sequence[int],
    current: Sequence[int],
    ratio: float,
    round_to: int,
    global_ranking: bool = False,
) -> dict[int, list[int]]:
    """The FFN neurons each encoder layer keeps (layer -> kept indices, only the layers that lose some): the same
    share of every layer, or ranked across layers (a layer keeps the neurons scored above the global
    threshold), each count rounded to the nearest multiple of ``round_to`` (at least one)."""
    if global_ranking:
        flat = torch.cat([s.flatten() for s in scores])
        keep_total = max(1, round(sum(base) * (1 - ratio)))
        threshold = torch.sort(flat, descending=True).values[min(keep_total, len(flat)) - 1]
        wanted = [int((s >= threshold).sum()) for s in scores]
    else:
        wanted = [round(b * (1 - ratio)) for b in base]
    plan = {}
    for li, (w, c) in enumerate(zip(wanted, current, strict=True)):
        k = min(c, nearest(w, round_to))
        if k < c:
            plan[li] = sorted(int(i) for i in torch.argsort(scores[li], descending=True)[:k])
    return plan


def cubic_sparsity(step: int, steps: int, final: float) -> float:
    """The sparsity after ``step`` of ``steps``: ``final * (1 - (1 - t/T)^3)`` (Zhu & Gupta 2017, "To prune, or
    not to prune")."""
    t = min(max(step, 0), steps) / max(steps, 1)
    return final * (1.0 - (1.0 - t) ** 3)
