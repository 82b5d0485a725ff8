"""What a candidate will cost before it is built or timed: the planner's pricing of layer shapes, and the greedy
widths that spend a cost budget where it loses the least accuracy.

A candidate is a set of layer shapes (``prune.latency_table.layer_shapes``). Its predicted cost is
``sum(cost(shape)) + c0``:

* :class:`MacsPricing` (a MACs target): each Conv/Linear's MACs, ``c0`` the dense model's other MACs -- exact,
  so a MACs plan needs no measurement beyond counting;
* :class:`LatencyPricing` (a latency target): ``cost = k * entry``, the latency table's entry of the layer (its
  kernel time in context) scaled by a per-model correction ``k``, and ``c0`` the session's per-run overhead.
  ``k`` is first fitted to the dense model's own profile -- the sum of its nodes' kernel times, the non-conv
  operators (pooling, additions, layout conversions, normalisation that is not folded) included -- so it
  spreads their time, and the difference between a layer in a network and a layer in context, over the layers
  in proportion to their time; then refitted (least squares through ``c0``) to every candidate timed end to
  end. The predicted speedup of a candidate is the dense model's predicted time over its own.
"""

from __future__ import annotations

from collections.abc import Sequence

from distillprune.prune.channels import Group
from distillprune.prune.latency_table import LatencyTable, LayerShape, layer_of

Shapes = dict[str, LayerShape]

__all__ = ["LatencyPricing", "MacsPricing", "Pricing", "greedy_widths", "next_goal"]


class Pricing:
    """The cost of layer shapes in one unit (ms, MACs); the base is the MACs pricing's interface."""

    unit = "MACs"
    exact = True  # the prediction is the measurement (nothing to confirm)

    def __init__(self, dense: float, c0: float) -> None:
        self.dense, self.c0 = dense, c0

    @property
    def measured(self) -> int:
        """Latency table entries timed (for the plan's report)."""
        return 0

    @property
    def cached(self) -> int:
        """Latency table entries read from the per-machine cache."""
        return 0

    def cost(self, shape: LayerShape) -> float:
        return float(shape.macs())

    def total(self, shapes: Shapes) -> float:
        return sum(self.cost(s) for s in shapes.values())

    def model(self, shapes: Shapes) -> float:
        """The predicted cost of a whole model with these layers."""
        return self.total(shapes) + self.c0

    def ratio(self, shapes: Shapes) -> float:
        """The predicted speedup (or MACs ratio) of a model with these layers over the dense model."""
        return self.dense / max(self.model(shapes), 1e-12)

    def goal(self, aim: float) -> float:
        """The layers' total cost a candidate aims at to be ``aim`` times cheaper than the dense model."""
        return self.dense / aim - self.c0

    def observe(self, shapes: Shapes, achieved: float) -> None:
        """A candidate with these layers measured ``achieved`` (its speedup or MACs ratio)."""

    def flush(self) -> None:
        """Keep what was timed (the latency table's cache)."""


class MacsPricing(Pricing):
    """MACs (see the module docstring)."""

    @classmethod
    def of(cls, dense_macs: int, shapes: Shapes) -> MacsPricing:
        layers = sum(s.macs() for s in shapes.values())
        return cls(float(dense_macs), float(max(dense_macs - layers, 0)))


class LatencyPricing(Pricing):
    """Milliseconds (see the module docstring)."""

    unit = "ms"
    exact = False

    def __init__(self, table: LatencyTable, shapes: Shapes, dense_ms: float) -> None:
        super().__init__(dense_ms, table.overhead)
        self.table = table
        raw = table.raw(shapes.values())
        self.k = max(dense_ms - self.c0, 1e-9) / max(raw, 1e-9)
        self.points: list[tuple[float, float]] = [(raw, dense_ms)]  # (sum of entries, model ms)

    @property
    def measured(self) -> int:
        return self.table.measured

    @property
    def cached(self) -> int:
        return self.table.cached

    def cost(self, shape: LayerShape) -> float:
        return self.k * self.table.ms(shape)

    def observe(self, shapes: Shapes, achieved: float) -> None:
        # the measured speedup in the dense model's predicted ms: load that slows both models alike cancels
        self.points.append((self.table.raw(shapes.values()), self.dense / max(achieved, 1e-9)))
        num = sum(raw * (ms - self.c0) for raw, ms in self.points)
        den = sum(raw * raw for raw, _ in self.points)
        if num > 0 and den > 0:
            self.k = num / den

    def flush(self) -> None:
        self.table.flush()


def next_goal(pricing: Pricing, shapes: Shapes, achieved: float, aim: float) -> float:
    """The layers' total cost to aim at next for a candidate with ``shapes`` that measured ``achieved``: the
    pricing's goal, moved by this candidate's own miss (measured less predicted time), so an error the fit
    cannot remove -- this depth's layers priced too high or too low -- is corrected where it occurs."""
    return pricing.goal(aim) - (pricing.dense / max(achieved, 1e-9) - pricing.model(shapes))


def greedy_widths(
    groups: Sequence[Group], shapes: Shapes, pricing: Pricing, goal: float
) -> tuple[dict[str, int], Shapes]:
    """Shrink, ``round_to`` channels at a time, the group whose next cut costs the least KD loss per unit of
    cost saved, until the layers' total cost meets ``goal``. A cut that saves nothing by itself (a layer's
    kernel can be as fast one step narrower) is priced together with the next steps of the same group, up to
    the first that saves. Returns the kept width per group root and the shapes of the result."""
    size = {g.root: g.size for g in groups}
    cin = {n: s.cin for n, s in shapes.items()}
    cout = {n: s.cout for n, s in shapes.items()}
    touched = {g.root: [n for n in shapes if layer_of(n) in set(g.outputs) | set(g.inputs)] for g in groups}

    def now(name: str) -> LayerShape:
        return shapes[name].resized(cin[name], cout[name])

    def saving(g: Group, k: int) -> float:
        out = 0.0
        for name in touched[g.root]:
            lost_in, lost_out = g.lost(layer_of(name), k)  # (a fused qkv loses 3 outputs per head channel)
            before = now(name)
            out += pricing.cost(before) - pricing.cost(before.resized(cin[name] - lost_in, cout[name] - lost_out))
        return out

    def best_cut(g: Group) -> tuple[float, int, float] | None:
        """(KD cost per unit saved, channels cut, saved) of the group's cheapest saving cut, or None."""
        done, s = g.size - size[g.root], size[g.root]
        new = s
        while new > g.min_keep:
            new = max(g.min_keep, ((new - 1) // g.step) * g.step)
            saved = saving(g, s - new)
            if saved > 0:
                kd = sum(g.cost[c] for c in g.order[done : done + s - new]) if g.cost else 0.0
                return kd / saved, s - new, saved
        return None

    total = pricing.total(shapes)
    while total > goal:
        cuts = [(c, g) for g in groups if (c := best_cut(g)) is not None]
        if not cuts:
            break  # nothing left that saves
        (_, k, saved), g = min(cuts, key=lambda t: t[0][0])
        for name in touched[g.root]:
            lost_in, lost_out = g.lost(layer_of(name), k)
            cin[name] -= lost_in
            cout[name] -= lost_out
        size[g.root] -= k
        total -= saved
    return size, {n: now(n) for n in shapes}
