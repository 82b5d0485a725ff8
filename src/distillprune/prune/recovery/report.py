"""What the recovery engine did, layer by layer (part of ``PruneReport``, stored in report.json)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LayerRecovery:
    """One layer's re-fit. Errors are relative calibration MSE (``||Y_hat - Y||^2 / ||Y||^2``)."""

    layer: str
    before: float | None = None
    after: float | None = None
    rows: int = 0
    accepted: bool = False
    skipped: str | None = None  # why the layer was left alone (grouped conv, ill-posed solve, no gain...)
    gated: bool = False  # the ReLU-aware solve was kept (recovery.relu; errors are then measured after the ReLU)


@dataclass
class RecoveryReport:
    """The layers one recovery pass touched, in forward order."""

    method: str
    samples: int = 0
    seconds: float = 0.0
    layers: list[LayerRecovery] = field(default_factory=list)

    @property
    def accepted(self) -> list[str]:
        return [r.layer for r in self.layers if r.accepted]

    @property
    def skipped(self) -> dict[str, str]:
        return {r.layer: r.skipped for r in self.layers if r.skipped is not None}

    def summary(self) -> str:
        done = [r for r in self.layers if r.accepted and r.before is not None and r.after is not None]
        if not done:
            return f"recovery ({self.method}): {len(self.accepted)} layers changed; skipped {len(self.skipped)}"
        b = sum(r.before for r in done if r.before is not None) / len(done)
        a = sum(r.after for r in done if r.after is not None) / len(done)
        return (
            f"recovery ({self.method}): {len(done)} layers re-fit on {self.samples} samples in "
            f"{self.seconds:.1f} s, mean relative error {b:.4f} -> {a:.4f}; skipped {len(self.skipped)}"
        )
