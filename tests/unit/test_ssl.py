"""Self-supervised learning: the losses on hand-computed cases, the two views, the heads that are never
exported, the probes, and an embedding model's output width kept by pruning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import distillprune as dp
from distillprune.core.batch import is_embedder
from distillprune.core.config import validate
from distillprune.data.base import Split
from distillprune.data.views import ViewLoader, Views, ViewsConfig, two_views
from distillprune.distill.losses import Outputs
from distillprune.distill.losses.seed import SEEDLoss
from distillprune.errors import DataError, DistillpruneError, RecipeError
from distillprune.measure.probe import knn_top1, linear_probe_top1
from distillprune.recipes.schema import Recipe
from distillprune.ssl import SSLConfig, SSLObjective
from distillprune.ssl.methods.byol import byol_loss
from distillprune.ssl.methods.simclr import nt_xent
from distillprune.train import FitSettings, OptimizerConfig, RuntimeConfig, ScheduleConfig, fit
from distillprune.train.context import Context, LoaderOptions
from distillprune.train.trainer import FitRun

QUIET = RuntimeConfig(progress=False, tensorboard=False)


# ---------------------------------------------------------------------------------------------- losses
def test_nt_xent_by_hand():
    # four views e1, e2, e1, e2 at temperature 1: each view's positive has similarity 1, its two negatives 0
    z = torch.eye(2)
    assert float(nt_xent(z, z.clone(), 1.0)) == pytest.approx(math.log(1 + 2 / math.e), abs=1e-6)
    # at temperature 0.5 every similarity doubles: -log(e^2 / (e^2 + 2))
    assert float(nt_xent(z, z.clone(), 0.5)) == pytest.approx(math.log(1 + 2 / math.e**2), abs=1e-6)
    # positives orthogonal to their anchors (e1 <-> e2 swapped): the positive is one of the zero-similarity views
    swapped = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert float(nt_xent(z, swapped, 1.0)) == pytest.approx(-math.log(1 / (1 + 1 + math.e)), abs=1e-6)


def test_nt_xent_normalises_and_is_symmetric():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    assert float(nt_xent(a, b, 0.2)) == pytest.approx(float(nt_xent(3 * a, 0.5 * b, 0.2)), abs=1e-5)
    assert float(nt_xent(a, b, 0.2)) == pytest.approx(float(nt_xent(b, a, 0.2)), abs=1e-5)


def test_byol_loss_by_hand():
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    assert float(byol_loss(e1, e1 * 5)) == pytest.approx(0.0, abs=1e-6)  # same direction: 2 - 2 cos = 0
    assert float(byol_loss(e1, e2)) == pytest.approx(2.0)  # orthogonal
    assert float(byol_loss(e1, -e1)) == pytest.approx(4.0)  # opposite
    p = torch.tensor([[1.0, 0.0]], requires_grad=True)
    z = torch.tensor([[1.0, 1.0]], requires_grad=True)
    byol_loss(p, z).backward()
    assert z.grad is None and p.grad is not None  # the target gets no gradient


def _seed(queue_rows: list[list[float]], ts: float = 1.0, tt: float = 1.0) -> SEEDLoss:
    loss = SEEDLoss(queue=len(queue_rows), temperature=ts, teacher_temperature=tt)
    probe = Outputs(torch.zeros(1, 2))
    loss.setup(probe, probe)
    loss.queue.copy_(torch.tensor(queue_rows))
    return loss


def test_seed_by_hand():
    # teacher t = e1, student s = e2, one queued teacher embedding q = e2; both temperatures 1:
    # p_t = softmax([t.t, t.q]) = softmax([1, 0]);  p_s = softmax([s.t, s.q]) = softmax([0, 1])
    # KL(p_t || p_s) = p_t0 * log(e) + p_t1 * log(1/e) = (e - 1) / (e + 1)
    loss = _seed([[0.0, 1.0]]).eval()
    s, t = Outputs(torch.tensor([[0.0, 3.0]])), Outputs(torch.tensor([[2.0, 0.0]]))  # normalised inside
    assert float(loss(s, t, None)) == pytest.approx((math.e - 1) / (math.e + 1), abs=1e-6)
    # the student equal to the teacher at the teacher's temperature: the same distribution, no loss
    assert float(loss(t, t, None)) == pytest.approx(0.0, abs=1e-6)
    # a sharper teacher (0.5) makes its own embedding the positive: p_t = softmax([2, 0])
    sharp = _seed([[0.0, 1.0]], tt=0.5).eval()
    pt = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    ps = torch.softmax(torch.tensor([0.0, 1.0]), 0)
    assert float(sharp(s, t, None)) == pytest.approx(float((pt * (pt / ps).log()).sum()), abs=1e-6)


def test_seed_queue_takes_teacher_embeddings_in_training_steps_only():
    loss = _seed([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    s = Outputs(torch.tensor([[1.0, 1.0], [1.0, -1.0]], requires_grad=True))
    t = Outputs(torch.tensor([[3.0, 0.0], [0.0, -2.0]]))
    loss.eval()
    loss(s, t, None)
    assert torch.equal(loss.queue, torch.tensor([[0.0, 1.0]] * 3))  # validation: unchanged
    loss.train()
    loss(s, t, None).backward()  # the loss read the queue before it changed (autograd is happy)
    assert torch.allclose(loss.queue, torch.tensor([[1.0, 0.0], [0.0, -1.0], [0.0, 1.0]]))  # normalised, FIFO
    loss(s, t, None)  # the next two go to rows 2 and 0 (the pointer wraps round: 2 + 2 = 1 mod 3)
    assert torch.allclose(loss.queue, torch.tensor([[0.0, -1.0], [0.0, -1.0], [1.0, 0.0]]))
    assert int(loss.ptr) == 1


def test_seed_learns_a_projection_for_another_width():
    loss = SEEDLoss(queue=8)
    s, t = Outputs(torch.randn(4, 3)), Outputs(torch.randn(4, 5))
    loss.setup(s, t)
    assert isinstance(loss.proj, torch.nn.Linear) and loss.queue.shape == (8, 5)
    assert torch.isfinite(loss(s, t, None))


# ---------------------------------------------------------------------------------------------- views
def _patterned(n: int = 6, side: int = 8) -> torch.Tensor:
    """Images that differ (a per-image level) and are not flat (a ramp), so crops and flips change them."""
    ramp = torch.linspace(0, 60, side).view(1, 1, 1, side).expand(n, 3, side, side)
    level = (torch.arange(n) * 30).view(n, 1, 1, 1).float()
    return (level + ramp).clamp(0, 255).to(torch.uint8)


def test_two_views_differ_and_are_paired():
    x = _patterned().float() / 255
    mean, std = torch.zeros(3), torch.ones(3)
    cfg = ViewsConfig(crop_scale=[0.3, 1.0], jitter=None, grayscale=0.0)
    views = two_views(x, torch.Generator().manual_seed(0), cfg, mean, std)
    assert isinstance(views, Views) and len(views) == 6 and views.first.shape == x.shape
    assert not torch.allclose(views.first, views.second)  # two different augmentations
    # paired: view i of either kind is a crop of image i (its level), nearer to it than to any other image
    for v in (views.first, views.second):
        levels = v.mean(dim=(1, 2, 3))
        own = x.mean(dim=(1, 2, 3))
        nearest = (levels.view(-1, 1) - own.view(1, -1)).abs().argmin(1)
        assert torch.equal(nearest, torch.arange(6))


def test_views_are_seeded_and_shared_out_like_the_global_batch():
    x = _patterned().float() / 255
    mean, std, cfg = torch.full((3,), 0.5), torch.full((3,), 0.25), ViewsConfig()
    a = two_views(x, torch.Generator().manual_seed(3), cfg, mean, std)
    b = two_views(x, torch.Generator().manual_seed(3), cfg, mean, std)
    assert torch.equal(a.first, b.first) and torch.equal(a.second, b.second)
    # under torchrun each rank draws for the global batch and keeps its share: together, the same views
    left = two_views(x[:4], torch.Generator().manual_seed(3), cfg, mean, std, draws=6, at=0)
    right = two_views(x[4:], torch.Generator().manual_seed(3), cfg, mean, std, draws=6, at=4)
    assert torch.allclose(torch.cat([left.first, right.first]), a.first, atol=1e-6)
    assert torch.allclose(torch.cat([left.second, right.second]), a.second, atol=1e-6)


def test_colour_jitter_and_grayscale_stay_in_pixel_range():
    x = _patterned().float() / 255
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    z = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    cfg = ViewsConfig(
        jitter={"brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.5, "p": 1.0}, grayscale=1.0
    )
    v = two_views(z, torch.Generator().manual_seed(1), cfg, mean, std).first
    px = v * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)
    assert float(px.min()) >= -1e-5 and float(px.max()) <= 1 + 1e-5
    assert torch.allclose(px[:, 0], px[:, 1], atol=1e-5) and torch.allclose(px[:, 1], px[:, 2], atol=1e-5)  # gray


def test_view_loader_serves_views_and_refuses_non_images():
    split = Split(_patterned(10), None)
    loader = ViewLoader(split, 4, torch.zeros(3), torch.ones(3), shuffle=True, views=ViewsConfig())
    batches = list(loader)
    assert [len(v) for v, _ in batches] == [4, 4, 2] and all(y is None for _, y in batches)
    assert isinstance(loader.prepare(split.x[:2]), torch.Tensor)  # a probe batch: one normalised batch
    with pytest.raises(DistillpruneError, match="images"):
        ViewLoader(Split(torch.randn(5, 3), None), 2, torch.zeros(3), torch.ones(3), views=ViewsConfig())
    with pytest.raises(ValueError, match="crop_scale"):
        ViewsConfig(crop_scale=[0.5, 0.2])


# ---------------------------------------------------------------------------------------------- training
def _digits_embedder():
    torch.manual_seed(0)
    return dp.make_model(
        {"name": "digits_cnn", "task": "embedding", "kwargs": {"widths": [8, 16, 16], "blocks": [1, 1, 1]}},
        10,
        (1, 8, 8),
    )


def _fit(model, objective, data, epochs=1.0):
    settings = FitSettings(epochs, OptimizerConfig(name="adamw", lr=1e-3), ScheduleConfig(name="constant"))
    return fit(model, data, settings, objective, context=Context(QUIET, LoaderOptions(batch_size=64)))


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_heads_train_with_the_model_and_are_never_exported(method, tmp_path):
    data = dp.load_data(dp.DataConfig(source="digits", limit_train=256, limit_test=64, labels=False))
    model, spec = _digits_embedder()
    keys = set(model.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    objective = SSLObjective(SSLConfig(method=method, hidden=24, out=12, views={"hflip": 0.0}))
    history = _fit(model, objective, data, 0.5)
    assert math.isfinite(history[-1]["loss"]) and history[-1]["loss"] > 0
    heads = list(objective.trainable())
    assert heads and {id(p) for p in heads}.isdisjoint(id(p) for p in model.parameters())
    assert set(model.state_dict()) == keys  # the heads live in the objective, not in the model
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # the backbone trained
    # the checkpoint and the ONNX file hold the backbone alone: 16 features out, not the head's 12
    dp.save_checkpoint(tmp_path / "ckpt", model, spec)
    loaded, _, _ = dp.load_checkpoint(tmp_path / "ckpt")
    assert is_embedder(loaded) and set(loaded.state_dict()) == keys
    from distillprune.export.onnx import onnx_bytes, run_onnx

    out = run_onnx(onnx_bytes(loaded, (1, 8, 8)), np.zeros((2, 1, 8, 8), np.float32))
    assert out.shape == (2, 16)


def test_ssl_objective_refuses_a_classifier_and_ssl_with_distill():
    data = dp.load_data(dp.DataConfig(source="digits", limit_train=128, limit_test=32, labels=False))
    classifier = dp.build_model("digits_cnn", 10, (1, 8, 8), widths=[8, 8, 8], blocks=[1, 1, 1])
    with pytest.raises(DistillpruneError, match="task: embedding"):
        _fit(classifier, SSLObjective(SSLConfig(method="simclr")), data, 0.5)
    with pytest.raises(RecipeError, match="two training objectives"):
        from distillprune.pipeline.stages.finetune import FinetuneStage

        validate(FinetuneStage, {"type": "finetune", "epochs": 1, "ssl": {"method": "simclr"}, "distill": {}})
    with pytest.raises(ValueError, match="has no option 'temprature'"):
        SSLConfig(method="simclr", temprature=0.1)
    with pytest.raises(ValueError, match="drop views"):
        SSLConfig(method="mlm", views={})


def test_prune_keeps_an_embedding_models_output_width():
    model, spec = _digits_embedder()
    x = torch.randn(8, 1, 8, 8)
    dp.prune_(model, {"width": {"ratio": 0.5, "round_to": 4}, "distill": None}, dp.Examples(x, 10), history=spec)
    assert model(x).shape == (8, 16)  # the embedding's width: what a vector index downstream expects
    assert any(m.out_channels < 16 for m in model.modules() if isinstance(m, torch.nn.Conv2d))


# ---------------------------------------------------------------------------------------------- probes
def test_knn_on_a_separable_set_is_perfect():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    memory_y = torch.arange(3).repeat_interleave(30)
    memory = centres[memory_y] + 0.5 * torch.randn(90, 3, generator=g)
    query_y = torch.arange(3).repeat(10)
    queries = centres[query_y] + 0.5 * torch.randn(30, 3, generator=g)
    assert knn_top1(memory, memory_y, queries, query_y, k=20) == 100.0
    assert linear_probe_top1(memory.numpy(), memory_y.numpy(), queries.numpy(), query_y.numpy()) == 100.0
    # the labels scrambled, kNN follows them: a probe measures the labels' geometry, not the features alone
    assert knn_top1(memory, memory_y, queries, (query_y + 1) % 3, k=20) == 0.0


def test_knn_weighs_votes_by_similarity():
    # two near neighbours of class 0 outvote three far ones of class 1 (k = 5): weights exp(cos / 0.07)
    memory = torch.tensor([[1.0, 0.05], [1.0, -0.05], [0.3, 1.0], [0.2, 1.0], [0.25, 1.0]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    assert knn_top1(memory, labels, torch.tensor([[1.0, 0.0]]), torch.tensor([0]), k=5) == 100.0
    assert knn_top1(memory, labels, torch.tensor([[1.0, 0.0]]), torch.tensor([0]), k=5, temperature=100) == 0.0


# ---------------------------------------------------------------------------------------------- no labels
def test_an_npz_of_images_alone_is_a_data_set_without_labels(tmp_path):
    x = np.random.default_rng(0).random((20, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "u.npz", x_train=x[:16], x_test=x[16:])
    data = dp.load_data(dp.DataConfig(source="npz", path=str(tmp_path / "u.npz")))
    assert data.train.y is None and data.test.y is None and data.num_classes == 0 and data.input_shape == (1, 8, 8)
    recipe = validate(
        Recipe,
        {
            "model": {"name": "mlp"},
            "data": {"source": "npz", "path": str(tmp_path / "u.npz")},
            "stages": [{"type": "evaluate"}],
        },
    )
    with pytest.raises(DataError, match="no labels, so no classes"):  # a classifier of nothing: refused up front
        dp.compress(recipe, quiet=True)
    np.savez(tmp_path / "half.npz", x_train=x[:16], x_test=x[16:], y_test=np.zeros(4, np.int64))
    with pytest.raises(DistillpruneError, match=r"missing arrays \['y_train'\]"):
        dp.load_data(dp.DataConfig(source="npz", path=str(tmp_path / "half.npz")))


def test_a_self_supervised_objective_is_served_no_label():
    data = dp.load_data(dp.DataConfig(source="digits", limit_train=128, limit_test=32))  # labelled data
    assert data.train.y is not None
    seen: list[object] = []

    class Spy(SSLObjective):
        def forward(self, model, x, y):  # type: ignore[no-untyped-def]
            seen.append(y)
            return super().forward(model, x, y)

    model, _ = _digits_embedder()
    _fit(model, Spy(SSLConfig(method="simclr", hidden=16, out=8)), data, 1.0)
    assert seen and all(y is None for y in seen)


def test_a_self_supervised_fine_tune_trains_to_the_end():
    """Keep-best judges by top-1 or a held-out loss; a self-supervised run has neither (no labels, an embedder),
    so its checks would keep the start: a fine-tune's default keep-best is off for it, and asking for it is
    refused."""
    from distillprune.pipeline.stages.finetune import FinetuneStage
    from distillprune.train.config import KeepBestConfig

    data = dp.load_data(dp.DataConfig(source="digits", limit_train=256, limit_test=32, labels=False))
    model, _ = _digits_embedder()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = FitSettings(
        1.0,
        OptimizerConfig(name="adamw", lr=1e-3),
        ScheduleConfig(name="constant"),
        keep_best=KeepBestConfig(samples=20),
    )
    history = fit(
        model, data, settings, SSLObjective(SSLConfig(method="simclr", hidden=16, out=8)), context=Context(QUIET)
    )
    assert "checks" not in history[-1] and "kept" not in history[-1]
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # not the start, restored
    with pytest.raises(RecipeError, match="keep_best has nothing to judge"):
        validate(
            FinetuneStage,
            {"type": "finetune", "epochs": 1, "ssl": {"method": "simclr"}, "keep_best": {"enabled": True}},
        )


class _Interrupt:
    def __init__(self, at: int):
        self.at, self.n = at, 0

    def __call__(self, model: torch.nn.Module) -> None:
        self.n += 1
        if self.n == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_resume_reproduces_the_uninterrupted_self_supervised_run(method, tmp_path):
    """The heads (and BYOL's momentum target) are in the epoch checkpoint; the views are drawn per (seed, epoch)."""
    data = dp.load_data(dp.DataConfig(source="digits", limit_train=128, limit_test=32, labels=False))

    def run(folder, resume=False, on_step=None):  # type: ignore[no-untyped-def]
        model, _ = _digits_embedder()
        torch.manual_seed(5)  # the heads' initialisation
        objective = SSLObjective(SSLConfig(method=method, hidden=16, out=8))
        settings = FitSettings(3, OptimizerConfig(name="adamw", lr=2e-3), ScheduleConfig(name="cosine"))
        hist = fit(
            model,
            data,
            settings,
            objective,
            context=Context(QUIET, LoaderOptions(batch_size=32, seed=1)),
            run=FitRun(ckpt_dir=folder, resume=resume, on_step=on_step),
        )
        return model, hist

    ref, ref_hist = run(tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", on_step=_Interrupt(4 + 2))  # 4 steps an epoch: in the middle of epoch 2
    resumed, hist = run(tmp_path / "cut", resume=True)
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), k
    assert [h["loss"] for h in hist] == pytest.approx([h["loss"] for h in ref_hist], abs=1e-5)


def test_distillation_on_views_shows_teacher_and_student_the_same_views():
    from distillprune.distill.config import DistillConfig
    from distillprune.distill.modes import make_objective

    data = dp.load_data(dp.DataConfig(source="digits", limit_train=128, limit_test=32))  # labelled: both served
    teacher, _ = _digits_embedder()
    student, _ = _digits_embedder()
    cfg = DistillConfig(losses=[{"name": "seed", "queue": 64}], views={"hflip": 0.0})
    objective = make_objective(cfg, teacher)
    assert objective.views is not None
    calls: list[int] = []
    original = objective._outputs

    def spy(model, x, live=False):  # type: ignore[no-untyped-def]
        if not live:  # a training step (attach's probe batch runs live)
            calls.append(len(x))
        return original(model, x, live)

    objective._outputs = spy  # type: ignore[method-assign]
    history = _fit(student, objective, data, 1.0)
    assert math.isfinite(history[-1]["loss"])
    assert calls == [2 * 64, 2 * 64]  # both views of the 64 images of each batch, in one batch
    with pytest.raises(ValueError, match="drop one"):
        DistillConfig(views={}, cache=True)
    with pytest.raises(ValueError, match="offline distillation"):
        DistillConfig(views={}, mode="mutual")
