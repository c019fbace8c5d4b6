"""OT-NFM: neural-flow maps (identity at t=0, exact inverses, Lipschitz bound) and the module."""

import copy
import math

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from otflow_lightning import OTNeuralFlowMatching, OTPairDataModule, WassersteinCallback
from otflow_lightning.data import Pair
from otflow_lightning.nets import AffineCouplingFlow, LipschitzLinear, ResidualFlowMap, ResNetFlow, TimeMLP


class TinyConvNet(nn.Module):
    """An image network ``net(x, t)`` standing in for a U-Net."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x, t):
        return self.conv(torch.cat([x, t[:, None, None, None].expand_as(x)], dim=1))


def maps():
    torch.manual_seed(0)
    return {
        "residual": ResidualFlowMap(TimeMLP(2, 64, 2, num_times=1)),
        "resnet": ResNetFlow(2, hidden=32, blocks=4),
        "coupling": AffineCouplingFlow(2, hidden=32, layers=4),
    }


@pytest.mark.parametrize("name", ["residual", "resnet", "coupling"])
def test_flow_map_is_identity_at_time_zero(name):
    net = maps()[name]
    for p in net.parameters():  # make the map non-trivial (the coupling's last layers start at zero)
        p.data.normal_(0, 0.5)
    x = torch.randn(64, 2) * 3
    assert torch.equal(net(x, torch.zeros(64)), x)
    assert (net(x, torch.ones(64)) - x).abs().max() > 1e-2


def test_image_flow_map_wraps_any_network():
    net = ResidualFlowMap(TinyConvNet())
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(net(x, torch.zeros(4)), x)
    t = torch.full((4,), 0.5)
    assert torch.allclose(net(x, t), x + 0.5 * net.net(x, t))


@pytest.mark.parametrize("name", ["resnet", "coupling"])
def test_inverse_recovers_source(name):
    net = maps()[name]
    with torch.no_grad():
        for p in net.parameters():  # large weights: the Lipschitz bound, not small weights, must make it invertible
            p.mul_(20.0) if p.ndim > 1 else p.normal_(0, 1.0)
    x0 = torch.randn(512, 2) * 3
    x1 = net(x0, 1.0)
    assert (x1 - x0).norm() / x0.norm() > 0.05  # it moved the points
    rel = (net.inverse(x1, 1.0) - x0).norm() / x0.norm()
    assert rel < 1e-4, rel


def test_lipschitz_linear_bound_is_exact_and_survives_weight_averaging():
    torch.manual_seed(0)
    a, b = LipschitzLinear(5, 7, bound=0.8, lipschitz_features=3), LipschitzLinear(5, 7, bound=0.8, lipschitz_features=3)
    for layer in (a, b):
        layer.weight.data *= 50
    # exact sigma of the constrained columns, on raw and on averaged (EMA-like) weights
    avg = copy.deepcopy(a)
    avg.weight.data = 0.5 * (a.weight.data + b.weight.data)
    for layer in (a, b, avg):
        s = torch.linalg.svdvals(layer.normalized_weight()[:, :3]).max()
        assert s <= 0.8 + 1e-5 and s >= 0.8 - 1e-5
    # and the residual of a ResNetFlow block is a contraction: finite-difference Lipschitz < c
    net = ResNetFlow(2, hidden=16, blocks=1, lipschitz=0.7)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(30.0)
    block, t = net.layers[0], torch.ones(4000)
    x, y = torch.randn(4000, 2) * 3, torch.randn(4000, 2) * 3
    y = x + 1e-3 * (y - x)
    ratio = (block.residual(x, t) - block.residual(y, t)).norm(dim=1) / (x - y).norm(dim=1)
    assert ratio.max() < 0.7 + 1e-3


def test_resnet_flow_rejects_non_contracting_bound():
    with pytest.raises(ValueError, match="lipschitz"):
        ResNetFlow(2, lipschitz=1.0)


def test_sample_refuses_composition_and_inverse_needs_invertible_map():
    model = OTNeuralFlowMatching(source="gaussian")
    assert model.sample(torch.randn(5, 2)).shape == (5, 2)
    with pytest.raises(ValueError, match="composing it"):
        model.sample(torch.randn(5, 2), steps=2)
    with pytest.raises(TypeError, match="invertible flow map"):
        model.inverse(torch.randn(5, 2))
    model = OTNeuralFlowMatching(net=AffineCouplingFlow(2, hidden=16, layers=2), source="gaussian")
    x0 = torch.randn(8, 2)
    assert torch.allclose(model.inverse(model.sample(x0)), x0, atol=1e-5)


def test_a_subclass_without_a_trial_skips_the_flow_map_check():
    """``trial_output`` returning ``None`` means "no check" (as in OneStepModule), not a crash."""

    class NoTrial(OTNeuralFlowMatching):
        def trial_output(self, x, labels):
            return None

    assert NoTrial(net=TimeMLP(2, 16, 1, num_times=1)).check_net() is None  # not a flow map, but unchecked
    with pytest.raises(ValueError, match="is not a flow map"):
        OTNeuralFlowMatching(net=TimeMLP(2, 16, 1, num_times=1)).check_net()


def test_check_steps_follows_a_subclass_supported_steps_and_names_it():
    class TwoStep(OTNeuralFlowMatching):
        supported_steps = (1, 2)

        @torch.no_grad()
        def sample(self, x0, steps=1, labels=None):
            z, labels = self.sample_input(x0, steps, labels)
            for _ in range(steps):  # its own scheme: restart the map from each intermediate point
                z = self.flow_map(z, torch.full((z.shape[0],), 1.0 / steps), labels)
            return z

    model = TwoStep()
    assert model.sample(torch.randn(4, 2), steps=2).shape == (4, 2)
    with pytest.raises(ValueError, match=r"TwoStep.sample does not support steps=3; allowed: \[1, 2\]"):
        model.sample(torch.randn(4, 2), steps=3)

    class OneStep(OTNeuralFlowMatching):
        pass

    with pytest.raises(ValueError, match="^OneStep.sample supports only steps=1, got steps=2: .*composing it"):
        OneStep().sample(torch.randn(4, 2), steps=2)


def test_loss_optimum_is_the_interpolant_of_a_deterministic_coupling():
    """Pairs x1 = A x0 + b: the regression's optimum is F(x0, t) = (1 - t) x0 + t (A x0 + b) at every t."""
    torch.manual_seed(0)
    A, b = torch.tensor([[1.5, 0.5], [-0.3, 0.8]]), torch.tensor([2.0, -1.0])

    class Linear(nn.Module):  # g(x, t) = W x + c: the exact optimum is representable
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x, t):
            return self.lin(x)

    model = OTNeuralFlowMatching(net=ResidualFlowMap(Linear()), source="gaussian", time_dist="uniform", endpoint_weight=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(600):
        x0 = torch.randn(256, 2)
        loss, logs = model.loss(Pair(x0, x0 @ A.T + b))
        opt.zero_grad()
        loss.backward()
        opt.step()
    x0 = torch.randn(100, 2)
    assert torch.allclose(model.sample(x0), x0 @ A.T + b, atol=1e-3)
    t = torch.full((100,), 0.3)
    assert torch.allclose(model.net(x0, t), 0.7 * x0 + 0.3 * (x0 @ A.T + b), atol=1e-3)
    assert logs["endpoint_mse"] < 1e-5


def _fit(coupling, steps, seed=0):
    pl.seed_everything(seed)
    model = OTNeuralFlowMatching(source="8gaussians", lr=3e-3)
    data = OTPairDataModule("moons", "8gaussians", coupling=coupling, batch_size=256, toy_size=20_000, seed=seed)
    trainer = pl.Trainer(
        max_steps=steps, val_check_interval=steps, check_val_every_n_epoch=None, callbacks=[WassersteinCallback(2000)],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(model, data)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@pytest.mark.slow
def test_mean_collapse_with_independent_coupling_and_not_with_ot():
    """The paper's Theorem 1 in practice: independent pairs collapse the one-step map to the data mean."""
    independent, ot = _fit("independent", 1500), _fit("exact", 1500)
    assert independent["val/w2_sq"] >= 20 * ot["val/w2_sq"], (independent, ot)
    assert independent["val/var_ratio"] < 0.10, independent
    assert abs(ot["val/var_ratio"] - 1.0) < 0.20, ot


def test_cosine_lr_schedule_follows_warmup_then_cosine():
    seen = {}

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]

    module = OTNeuralFlowMatching(source="8gaussians", lr=1e-2, warmup_steps=4, lr_schedule="cosine")
    data = OTPairDataModule("moons", "8gaussians", batch_size=32, toy_size=512)
    pl.Trainer(max_steps=20, logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
               callbacks=[Record()]).fit(module, data)
    expect = {s: 1e-2 * min(1.0, (s + 1) / 4) * 0.5 * (1 + math.cos(math.pi * s / 20)) for s in range(20)}
    assert seen == pytest.approx(expect, rel=1e-6)
    with pytest.raises(ValueError, match="lr_schedule"):
        OTNeuralFlowMatching(lr_schedule="step")


def test_var_ratio_skips_a_one_sample_validation_batch():
    """2049 validation samples in batches of 256 leave a last batch of one, which has no variance."""
    data = OTPairDataModule(target="moons", source="8gaussians", coupling="exact", batch_size=256, val_size=2049)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    metrics = trainer.validate(OTNeuralFlowMatching(source="8gaussians"), data, verbose=False)[0]
    assert math.isfinite(metrics["val/var_ratio"]) and metrics["val/var_ratio"] > 0
