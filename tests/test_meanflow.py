import copy
import os
import warnings

import pytest
import torch
from torch import nn

from otflow_lightning import OTMeanFlow, Pair
from otflow_lightning.nets import TimeMLP


class StraightLineVelocity(nn.Module):
    """Analytic average velocity of the deterministic pairing x1 = A x0 + b.

    Paths are straight, so u(z, t, e) = x1 - x0 = (A - I) x0 + b with x0 = (I + t (A - I))^-1 (z - t b).
    """

    def __init__(self, A, b):
        super().__init__()
        self.A, self.b = A, b
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, z, t, h):
        eye = torch.eye(self.A.shape[0], dtype=z.dtype)
        M = eye + t[:, None, None] * (self.A - eye)
        x0 = torch.linalg.solve(M, (z - t[:, None] * self.b).unsqueeze(-1)).squeeze(-1)
        return x0 @ (self.A - eye).T + self.b + 0 * self.dummy


def straight_case(n=64):
    g = torch.Generator().manual_seed(0)
    A = torch.tensor([[1.5, 0.3], [-0.2, 0.8]], dtype=torch.float64)
    b = torch.tensor([2.0, -1.0], dtype=torch.float64)
    x0 = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return A, b, x0, x0 @ A.T + b


def test_jvp_total_derivative_matches_finite_differences():
    torch.manual_seed(0)
    m = OTMeanFlow(net=TimeMLP(2, 32, 2, 2).double())
    n = 16
    z, v = torch.randn(n, 2, dtype=torch.float64), torch.randn(n, 2, dtype=torch.float64)
    t, e = torch.rand(n, dtype=torch.float64) * 0.5, 0.5 + torch.rand(n, dtype=torch.float64) * 0.5
    tangents = (v, torch.ones_like(t), torch.zeros_like(e))
    _, dudt = torch.func.jvp(m.average_velocity, (z, t, e), tangents)
    eps = 1e-6
    fd = (m.average_velocity(z + eps * v, t + eps, e) - m.average_velocity(z - eps * v, t - eps, e)) / (2 * eps)
    assert torch.allclose(dudt, fd, atol=1e-7, rtol=1e-6)
    # and the target the module regresses on uses exactly this derivative
    u, target = m.meanflow_target(z, t, e, v)
    assert torch.allclose(target, v + (e - t)[:, None] * fd, atol=1e-6)


def test_meanflow_target_is_a_fixed_point_of_the_analytic_velocity():
    A, b, x0, x1 = straight_case()
    m = OTMeanFlow(net=StraightLineVelocity(A, b), adaptive_p=0.0, interval_fraction=1.0)
    t = torch.rand(64, dtype=torch.float64) * 0.9
    e = t + (1 - t) * torch.rand(64, dtype=torch.float64)
    z = (1 - t[:, None]) * x0 + t[:, None] * x1
    u, target = m.meanflow_target(z, t, e, x1 - x0)
    assert torch.allclose(u, x1 - x0, atol=1e-10)
    assert torch.allclose(target, u, atol=1e-10)
    m.time_generator = lambda: torch.Generator().manual_seed(0)  # no trainer needed
    loss, _ = m.loss(Pair(x0, x1))
    assert loss.item() < 1e-12


def test_wrong_velocity_is_not_a_fixed_point():
    """The fixed-point test can fail: the reversed pairing's velocity gives a non-zero loss."""
    A, b, x0, x1 = straight_case()
    m = OTMeanFlow(net=StraightLineVelocity(A, b), adaptive_p=0.0, interval_fraction=1.0)
    m.time_generator = lambda: torch.Generator().manual_seed(0)
    loss, _ = m.loss(Pair(x1, x0))  # source and target swapped
    assert loss.item() > 1.0


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_sample_moves_source_to_target(steps):
    A, b, x0, x1 = straight_case()
    m = OTMeanFlow(net=StraightLineVelocity(A, b))
    out = m.sample(x0, steps=steps)
    assert torch.allclose(out, x1, atol=1e-9)
    assert not torch.allclose(out, x0, atol=1e-1)


def test_time_sampler_translation():
    m = OTMeanFlow(time_mean=0.4, time_std=1.0, interval_fraction=0.25)
    m.time_generator = lambda: torch.Generator().manual_seed(0)
    t, e = m.sample_times(20000)
    assert (e >= t).all() and (t >= 0).all() and (e <= 1).all()
    assert abs((e != t).float().mean().item() - 0.25) < 0.02
    # (t, e) of the interval samples are the sorted pair of two LN(0.4, 1) draws: pooled, they are LN(0.4, 1)
    # (public mean +0.4 = MeanFlow's P_mean -0.4: mass towards the target end)
    pooled = torch.logit(torch.cat([t[e != t], e[e != t]]).double())
    assert abs(pooled.mean().item() - 0.4) < 0.05 and abs(pooled.std().item() - 1.0) < 0.05
    assert torch.logit(t[e == t]).mean() < 0.4 - 0.4  # e = t samples keep the earlier time (MeanFlow's r = t)


def test_flow_matching_warmup_draws_only_e_equal_t_until_its_last_step():
    class AtStep(OTMeanFlow):
        global_step = 0  # a plain attribute in place of the trainer's count

    m = AtStep(interval_fraction=0.5, fm_warmup_steps=10)
    m.time_generator = lambda: torch.Generator().manual_seed(0)
    for step, share in ((0, 0.0), (9, 0.0), (10, 0.5)):
        m.global_step = step
        t, e = m.sample_times(4000)
        assert abs((e != t).float().mean().item() - share) < 0.03, step


def test_the_subclass_example_shifts_start_times_and_keeps_the_flow_matching_share():
    """examples/subclass_meanflow.py halves t; its e = t rows (1 - interval_fraction) stay e = t."""
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "examples", "subclass_meanflow.py")
    spec = importlib.util.spec_from_file_location("subclass_meanflow", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    m = example.HuberMeanFlow(interval_fraction=0.75, time_dist="uniform")
    m.time_generator = lambda: torch.Generator().manual_seed(0)
    t, e = m.sample_times(20000)
    base = OTMeanFlow(interval_fraction=0.75, time_dist="uniform")
    base.time_generator = lambda: torch.Generator().manual_seed(0)
    t0, e0 = base.sample_times(20000)
    assert (e >= t).all() and (t >= 0).all() and (e <= 1).all()
    assert abs((e == t).float().mean().item() - 0.25) < 0.02
    assert torch.equal(t, t0 * 0.5) and torch.equal(e == t, e0 == t0)
    assert torch.equal(e[e != t], e0[e0 != t0])


class OffsetVelocity(StraightLineVelocity):
    """The straight-line average velocity plus a constant ``delta``: every row's error is ``|delta|^2``."""

    def __init__(self, A, b, delta):
        super().__init__(A, b)
        self.delta = delta

    def forward(self, z, t, h):
        return super().forward(z, t, h) + self.delta


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_the_loss_is_the_adaptively_weighted_error(p):
    """With the error |delta|^2 in every row, the loss is sg(w) |delta|^2 with w = 1 / (|delta|^2 + c)^p."""
    A, b, x0, x1 = straight_case()
    delta = torch.tensor([0.3, -0.4], dtype=torch.float64)  # |delta|^2 = 0.25
    m = OTMeanFlow(net=OffsetVelocity(A, b, delta), adaptive_p=p, adaptive_c=1e-3).double()
    loss, logs = m.loss(Pair(x0, x1))
    assert loss.item() == pytest.approx(0.25 / (0.25 + 1e-3) ** p, rel=1e-6)
    assert logs["mse"].item() == pytest.approx(0.25 / 2, rel=1e-6)


def test_adaptive_weight():
    m = OTMeanFlow(adaptive_p=1.0, adaptive_c=1e-3)
    err = torch.tensor([0.0, 1.0, 9.0])
    assert torch.allclose(m.loss_weight(err), 1 / (err + 1e-3))
    assert OTMeanFlow(adaptive_p=0.0).loss_weight(err).eq(1).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="time_dist"):
        OTMeanFlow(time_dist="normal")
    with pytest.raises(ValueError, match="interval_fraction"):
        OTMeanFlow(interval_fraction=1.5)
    with pytest.raises(ValueError, match="source"):
        OTMeanFlow(source="8gaussians", data_shape=(3, 8, 8), net=nn.Identity())
    with pytest.raises(ValueError, match="steps=0"):
        OTMeanFlow().sample(torch.zeros(3, 2), steps=0)
    for kwargs, message in [
        (dict(data_shape=2), r"data_shape must be a list of positive sizes.* got 2"),
        (dict(data_shape=[0]), "data_shape must be a list of positive sizes"),
        (dict(lr=-1e-3), "lr must be > 0"),
        (dict(betas=(0.9,)), r"betas must be two numbers in \[0, 1\)"),
        (dict(warmup_steps=-5), "warmup_steps must be >= 0, got -5"),
        (dict(time_std=0.0), "time_std must be > 0"),
        (dict(num_classes=3, guidance_scale=0.0), "guidance_scale must be > 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            OTMeanFlow(**kwargs)


@pytest.mark.parametrize("module", ["mf", "nfm"])
def test_sample_checks_its_input_and_names_the_argument(module):
    from otflow_lightning import OTNeuralFlowMatching

    cls = OTMeanFlow if module == "mf" else OTNeuralFlowMatching
    model, conditional = cls(), cls(num_classes=3)
    for bad, message in [
        (dict(x0=torch.zeros(5, 3)), r"x0 must have shape \(n, \*data_shape\) = \(n, 2\), got \(5, 3\)"),
        (dict(x0=torch.zeros(2)), "x0 must have shape"),
        (dict(x0=torch.zeros(3, 2), steps=1.0), "steps must be a positive integer"),
    ]:
        with pytest.raises(ValueError, match=message):
            model.sample(**bad)
    for labels, message in [([4, 0, 1], r"labels must lie in \[0, 3\].*got \[0, 4\]"), ([-1, 0, 1], "got \\[-1, 1\\]"),
                            ([1.7, 0.0, 1.0], "integer class indices")]:
        with pytest.raises(ValueError, match=message):
            conditional.sample(torch.zeros(3, 2), labels=torch.tensor(labels))
    assert conditional.sample(torch.zeros(3, 2), labels=torch.tensor([3, 0, 2])).shape == (3, 2)  # 3: the null label
    for n in (2.5, -1, True):
        with pytest.raises(ValueError, match=r"n must be a number of samples \(an integer >= 0\), got"):
            model.generate(n)
    assert model.generate(0).shape == (0, 2) and model.generate(torch.tensor(3)).shape == (3, 2)


@pytest.mark.parametrize("module", ["mf", "nfm"])
def test_sample_runs_the_net_in_eval_mode_and_in_its_dtype(module):
    from otflow_lightning import OTNeuralFlowMatching
    from otflow_lightning.nets import ResidualFlowMap

    net = TimeMLP(dim=2, num_times=2 if module == "mf" else 1)
    net.layers.insert(1, nn.Dropout(0.5))  # dropout a sample must not see
    model = OTMeanFlow(net=net) if module == "mf" else OTNeuralFlowMatching(net=ResidualFlowMap(net))
    model.train()
    x0 = torch.randn(64, 2)
    assert torch.equal(model.sample(x0), model.sample(x0))
    assert model.training and model.net.training  # each submodule's mode is restored
    model.net.eval()  # one frozen part stays frozen
    model.sample(x0)
    assert model.training and not model.net.training
    calls = []

    class FrozenNet(type(model)):  # a train() override (e.g. frozen batch norm) is honoured on restore
        def train(self, mode=True):
            calls.append(mode)
            super().train(mode)
            self.net.eval()
            return self

    model.__class__ = FrozenNet
    model.train()
    calls.clear()
    model.sample(x0)
    assert calls == [False, True] and model.training and not model.net.training
    # a float64 input to a float32 module, a float32 input to a bfloat16 module: computed in the
    # module's dtype, returned in the input's
    assert model.sample(x0.double()).dtype == torch.float64
    assert model.sample(x0.double().numpy()).dtype == torch.float64  # an array too: x0's dtype, as documented
    assert model.sample(x0.numpy()).dtype == torch.float32
    half = model.to(torch.bfloat16)
    assert half.sample(x0).dtype == torch.float32 and half.generate(4).dtype == torch.bfloat16


def test_mismatched_nets_and_guidance_are_refused_at_construction():
    from otflow_lightning import OTNeuralFlowMatching
    from otflow_lightning.nets import ResNetFlow

    with pytest.raises(ValueError, match="num_classes=10 but its net's TimeMLP was built with num_classes=20"):
        OTMeanFlow(num_classes=10, net=TimeMLP(dim=2, num_times=2, num_classes=20))
    with pytest.raises(ValueError, match="needs a net that takes labels="):
        OTNeuralFlowMatching(num_classes=3, net=ResNetFlow(dim=2))
    with pytest.raises(ValueError, match=r"data_shape=\(1, 8, 8\) needs a net"):
        OTMeanFlow(data_shape=(1, 8, 8))
    from otflow_lightning.nets import ResidualFlowMap, UNet

    with pytest.raises(ValueError, match=r"data_shape=\(2,\) but the net's TimeMLP was built with dim=3; build it with dim=2"):
        OTMeanFlow(net=TimeMLP(dim=3, num_times=2))  # was a bare "mat1 and mat2 shapes cannot be multiplied" in training
    with pytest.raises(ValueError, match="built with dim=5"):
        OTNeuralFlowMatching(net=ResidualFlowMap(TimeMLP(dim=5)))
    with pytest.raises(ValueError, match=r"has 3 channels but the net's UNet was built with in_channels=1"):
        OTMeanFlow(net=UNet(1, preset="tiny", num_times=2), data_shape=(3, 8, 8))
    with pytest.raises(ValueError, match="guidance_kappa.*label dropout"):
        OTMeanFlow(num_classes=3, label_dropout=0.0, guidance_kappa=0.5)


def test_non_finite_loss_says_whether_the_batch_was_bad():
    model = OTMeanFlow()
    x1 = torch.randn(8, 2)
    x1[3, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="x1 hold NaN/Inf; check the data"):
        model.training_step(Pair(torch.randn(8, 2), x1), 0)
    x1 = torch.randn(8, 2)
    with torch.no_grad():
        next(model.net.parameters())[0, 0] = float("nan")  # a diverged update
    with pytest.raises(FloatingPointError, match="the batch is finite but the weights are not"):
        model.training_step(Pair(torch.randn(8, 2), x1), 0)
    torch.set_default_dtype(torch.float16)  # as Lightning's 16-true precision sets it around each step
    try:
        with pytest.raises(FloatingPointError, match=r"float16 \(precision 16-true\), where AdamW's eps underflows"):
            model.half().training_step(Pair(torch.randn(8, 2).half(), x1.half()), 0)
    finally:
        torch.set_default_dtype(torch.float32)


def test_float64_data_trains_in_the_modules_dtype():
    """numpy's float64 arrays (``torch.from_numpy``) train a float32 module: the pair is cast, as in ``sample``."""
    import lightning.pytorch as pl
    from torch.utils.data import TensorDataset

    from otflow_lightning import OTPairDataModule

    x = torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = OTMeanFlow(source="gaussian")
    before = [p.detach().clone() for p in model.parameters()]
    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, OTPairDataModule(target=TensorDataset(x), source="gaussian", batch_size=64))
    assert trainer.global_step == 3
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_batches_of_another_form_go_through_the_as_pair_hook_and_log_their_own_size():
    """A DataModule of ``(x0, x1)`` tuples: ``as_pair`` converts them, the pair is cast to the module's
    dtype, and the epoch means weight each batch by its number of pairs (32 and 8), not ``len(tuple)``."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    class TupleMeanFlow(OTMeanFlow):
        def as_pair(self, batch):
            return Pair(batch[0], batch[1])

        def loss(self, pair):
            assert pair.x1.dtype == torch.float32
            return torch.tensor(float(len(pair))), {}

    x = torch.randn(40, 2, dtype=torch.float64)
    loader = DataLoader(TensorDataset(x, x + 1), batch_size=32)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    model = TupleMeanFlow()
    expected = (32 * 32 + 8 * 8) / 40  # each batch's loss is its size
    assert trainer.validate(model, loader, verbose=False)[0]["val/loss"] == pytest.approx(expected)
    assert trainer.test(model, loader, verbose=False)[0]["test/loss"] == pytest.approx(expected)
    assert [s.shape for s in trainer.predict(model, loader)] == [(32, 2), (8, 2)]
    with pytest.raises(TypeError, match="override as_pair"):
        OTMeanFlow().validation_step((x, x), 0)

    class Broken(OTMeanFlow):
        def as_pair(self, batch):
            return batch

    with pytest.raises(TypeError, match="Broken.as_pair returned a tuple; it must return a Pair"):
        Broken().training_step((x, x), 0)

    class Narrow(OTMeanFlow):  # x1 of another shape trained silently through broadcasting
        def as_pair(self, batch):
            return Pair(batch[0], batch[1][:, :1])

    with pytest.raises(ValueError, match=r"Narrow.as_pair returned x0 \(40, 2\) and x1 \(40, 1\); both must be "
                                         r"\(n, \*data_shape\) = \(n, 2\)"):
        Narrow().training_step((x, x), 0)
    mixed = Pair(x, x.float())  # float64 x0, float32 x1: both cast
    assert OTMeanFlow()._pair(mixed).x0.dtype == OTMeanFlow()._pair(mixed).x1.dtype == torch.float32


class WrongWidthNet(nn.Module):
    """Returns 3 features for 2D data (the user's mistake)."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 3)

    def forward(self, z, t, h=None):
        return self.layer(torch.cat([z, t[:, None], (t if h is None else h)[:, None]], 1))


def test_net_mistakes_are_named(tmp_path):
    """A net of the wrong output shape, a BatchNorm in an OT-MF net, and a reload without the Python-built
    net get errors/warnings that say so, instead of torch's broadcasting / functorch / state-dict errors."""
    import lightning.pytorch as pl

    from otflow_lightning import OTNeuralFlowMatching

    pair = Pair(torch.randn(8, 2), torch.randn(8, 2))
    for module in (OTMeanFlow(net=WrongWidthNet()), OTNeuralFlowMatching(net=WrongWidthNet())):
        with pytest.raises(ValueError, match=r"the net returned shape \(\d+, 3\) for an input of shape \(\d+, 2\)"):
            module.training_step(pair, 0)
    with pytest.raises(ValueError, match="holds a BatchNorm1d.*use GroupNorm or LayerNorm"):
        OTMeanFlow(net=nn.Sequential(nn.BatchNorm1d(2), WrongWidthNet()))
    # a net built in Python is not in the checkpoint's hyperparameters: reloading without it names the fix
    model = OTMeanFlow(net=TimeMLP(dim=2, num_times=2, hidden=32))
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(ckpt := os.path.join(tmp_path, "python_net.ckpt"))
    advice = r"net was built in Python.*load_from_checkpoint\(path, net=<the same network>\)"
    with pytest.warns(UserWarning, match=advice):
        with pytest.raises(RuntimeError, match="state_dict"):
            OTMeanFlow.load_from_checkpoint(ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        reloaded = OTMeanFlow.load_from_checkpoint(ckpt, net=TimeMLP(dim=2, num_times=2, hidden=32))
    assert all(torch.equal(a, b) for a, b in zip(reloaded.parameters(), model.parameters()))
    # a net with lazy (uninitialised) parameters reloads as before: nothing to compare, no error
    lazy = OTMeanFlow(net=LazyNet())
    lazy.net(torch.randn(4, 2), torch.rand(4), torch.rand(4))  # materialised
    trainer.strategy.connect(lazy)
    trainer.save_checkpoint(ckpt := os.path.join(tmp_path, "lazy.ckpt"))
    assert torch.equal(OTMeanFlow.load_from_checkpoint(ckpt, net=LazyNet()).net.layer.weight, lazy.net.layer.weight)


def test_a_net_that_does_not_fit_the_data_is_refused_before_training(tmp_path):
    import lightning.pytorch as pl

    from otflow_lightning import OTNeuralFlowMatching, OTPairDataModule
    from otflow_lightning.nets import ResidualFlowMap

    class ThreeFeatures(nn.Module):  # a custom net built for 3 features, trained on 2D data
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(3, 2)

        def forward(self, z, t, h=None):
            return self.layer(z)

    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match=r"the net \(ThreeFeatures\) fails on inputs of data_shape=\(2,\): .*mat1"):
        trainer.fit(OTMeanFlow(net=ThreeFeatures()), OTPairDataModule("moons", batch_size=16))
    assert trainer.global_step == 0
    # OT-NFM needs a flow map, F(x, 0) = x: a bare TimeMLP is not one, the same net wrapped is
    with pytest.raises(ValueError, match=r"is not a flow map: max \|F\(x, 0\) - x\| = .* wrap it: ResidualFlowMap\(net\)"):
        OTNeuralFlowMatching(net=TimeMLP(dim=2, num_times=1)).check_net()
    OTNeuralFlowMatching(net=ResidualFlowMap(TimeMLP(dim=2, num_times=1))).check_net()
    # a net built for the other module's number of times: the error names the num_times to build it with
    with pytest.raises(ValueError, match=r"TimeMLP was built for num_times=2 time arguments but was called with 1: "
                                         r"OT-MF nets take 2 \(t, h\), OT-NFM flow maps 1; build it with num_times=1"):
        OTNeuralFlowMatching(net=ResidualFlowMap(TimeMLP(dim=2, num_times=2))).check_net()
    with pytest.raises(ValueError, match=r"num_times=1 time arguments but was called with 2: .* build it with num_times=2"):
        OTMeanFlow(net=TimeMLP(dim=2, num_times=1)).check_net()
    # a subclass of the base from outside the library defines no trial: it trains as before
    from otflow_lightning import OneStepModule

    class Direct(OneStepModule):
        def loss(self, pair):
            return (self.net(pair.x0) - pair.x1).square().mean(), {}

        def sample(self, x0, steps=1, labels=None):
            return self.net(x0)

    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0)
    trainer.fit(Direct(nn.Linear(2, 2)), OTPairDataModule("moons", batch_size=16))
    assert trainer.global_step == 2
    # an error that is not about shapes is the net's own, unchanged
    class Broken(nn.Module):
        def forward(self, z, t, h):
            raise RuntimeError("the net's own failure")

    with pytest.raises(RuntimeError, match="^the net's own failure$"):
        OTMeanFlow(net=Broken()).check_net()


class LazyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.LazyLinear(2)

    def forward(self, z, t, h):
        return self.layer(torch.cat([z, t[:, None], h[:, None]], 1))


# ---------------------------------------------------------------- a curved flow, and the two-pass JVP
SPIRAL = torch.tensor([[0.0, -2.0], [2.0, -0.5]], dtype=torch.float64)  # dz/dt = SPIRAL z: spiralling, curved paths


class ExactAverageVelocity(nn.Module):
    """u(z, t, h) = (exp(SPIRAL h) - I) z / h (h -> 0: SPIRAL z): the exact average velocity of dz/dt = SPIRAL z."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, z, t, h):
        hs = h.clamp_min(1e-12)[:, None, None]
        M = (torch.linalg.matrix_exp(SPIRAL * hs) - torch.eye(2, dtype=z.dtype)) / hs
        return torch.einsum("nij,nj->ni", M, z) + 0 * self.dummy


def test_meanflow_target_is_the_exact_average_velocity_of_a_curved_flow():
    g = torch.Generator().manual_seed(0)
    m = OTMeanFlow(net=ExactAverageVelocity()).double()
    z = torch.randn(32, 2, generator=g, dtype=torch.float64)
    t = 0.5 * torch.rand(32, generator=g, dtype=torch.float64)
    e = t + 0.1 + 0.4 * torch.rand(32, generator=g, dtype=torch.float64)
    u, target = m.meanflow_target(z, t, e, z @ SPIRAL.T)  # v = A z: the true instantaneous velocity
    assert (u - z @ SPIRAL.T).abs().max() > 0.1  # u != v: the JVP term matters here
    torch.testing.assert_close(target, u, rtol=1e-9, atol=1e-9)
    # and sample() follows the flow: z_1 = exp(SPIRAL) z_0, in one step and in several
    x0 = torch.randn(16, 2, generator=g, dtype=torch.float64)
    for steps in (1, 3):
        torch.testing.assert_close(m.sample(x0, steps=steps), x0 @ torch.linalg.matrix_exp(SPIRAL).T, rtol=1e-9, atol=1e-9)


def test_jvp_no_grad_matches_the_single_jvp_path_with_dropout():
    torch.manual_seed(0)
    net = TimeMLP(2, 32, 2, 2).double()
    net.layers.insert(1, nn.Dropout(0.3))  # dropout in train mode: both passes must draw the same mask
    a = OTMeanFlow(net=net).double().train()
    b = OTMeanFlow(net=copy.deepcopy(net), jvp_no_grad=True).double().train()
    g = torch.Generator().manual_seed(1)
    z, v = torch.randn(64, 2, generator=g, dtype=torch.float64), torch.randn(64, 2, generator=g, dtype=torch.float64)
    t = 0.5 * torch.rand(64, generator=g, dtype=torch.float64)
    e = t + 0.5 * torch.rand(64, generator=g, dtype=torch.float64)
    torch.manual_seed(7)
    ua, ta = a.meanflow_target(z, t, e, v)
    torch.manual_seed(7)
    ub, tb = b.meanflow_target(z, t, e, v)
    torch.testing.assert_close(ub, ua, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tb, ta, rtol=1e-12, atol=1e-12)
    assert not ta.requires_grad and not tb.requires_grad  # stop-gradient on the target
    assert (ta - v).abs().max() > 1e-3  # the JVP term is not trivially zero
    (ua - ta).square().sum().backward()
    (ub - tb).square().sum().backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-10, atol=1e-12)
