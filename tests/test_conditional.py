"""Class-conditional generation: labels reach the net, guidance is folded into training, and a
conditional model trained on the C2OT coupling generates the class it is asked for."""

import warnings

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from otflow_lightning import OTMeanFlow, OTNeuralFlowMatching, OTPairDataModule, Pair
from otflow_lightning.callbacks.common import eval_labels, generate
from otflow_lightning.nets import ResidualFlowMap, TimeMLP, UNet

CENTRES = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]])


def blobs(n: int, seed: int) -> TensorDataset:
    """Three labelled Gaussian blobs (std 0.3) at ``CENTRES``."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    return TensorDataset(CENTRES[y] + 0.3 * torch.randn(n, 2, generator=g), y)


class KnownVelocity(nn.Module):
    """``u(z, t, h | label)``: 10 for the null label, 20 + label otherwise (a constant per row)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, z, t, h, labels=None):
        labels = torch.full((z.shape[0],), self.num_classes) if labels is None else labels
        value = torch.where(labels == self.num_classes, 10.0, 20.0 + labels.double())
        return value[:, None].expand_as(z) + 0 * self.dummy


@pytest.mark.parametrize("omega, kappa", [(1.0, 0.0), (2.0, 0.0), (1.5, 0.3)])
def test_meanflow_guided_velocity_is_meanflows_cfg_combination(omega, kappa):
    m = OTMeanFlow(net=KnownVelocity(3), num_classes=3, guidance_scale=omega, guidance_kappa=kappa)
    z, t = torch.zeros(4, 2, dtype=torch.float64), torch.rand(4, dtype=torch.float64)
    v = torch.arange(8, dtype=torch.float64).reshape(4, 2)
    labels = torch.tensor([0, 2, 3, 1])  # 3 = null: keeps v
    got = m.guided_velocity(z, t, v, labels)
    u_cond = 20.0 + labels.double()[:, None]
    want = omega * v + kappa * u_cond + (1 - omega - kappa) * 10.0
    want[2] = v[2]
    torch.testing.assert_close(got, want)


def test_meanflow_guidance_applies_only_inside_its_interval():
    """MeanFlow's guidance interval: rows whose start time t lies outside it keep the plain v."""
    m = OTMeanFlow(net=KnownVelocity(3), num_classes=3, guidance_scale=2.0, guidance_kappa=0.3,
                   guidance_interval=(0.25, 0.5))
    z = torch.zeros(5, 2, dtype=torch.float64)
    t = torch.tensor([0.1, 0.25, 0.4, 0.5, 0.9], dtype=torch.float64)
    v = torch.arange(10, dtype=torch.float64).reshape(5, 2)
    labels = torch.tensor([0, 1, 2, 0, 1])
    got = m.guided_velocity(z, t, v, labels)
    want = 2.0 * v + 0.3 * (20.0 + labels.double()[:, None]) + (1 - 2.0 - 0.3) * 10.0
    torch.testing.assert_close(got[1:4], want[1:4])
    torch.testing.assert_close(got[[0, 4]], v[[0, 4]])
    for bad in [(0.6, 0.5), (0.3, 0.3), 0.5, (0.1, 0.5, 0.9), ("0.1", "0.5"), None, (float("nan"), 1.0), (True, 1)]:
        with pytest.raises(ValueError, match=r"guidance_interval must be \(lo, hi\) with 0 <= lo < hi <= 1"):
            OTMeanFlow(num_classes=3, guidance_scale=2.0, guidance_interval=bad)
    with pytest.raises(ValueError, match=r"limits guidance, but the model is not guided"):
        OTMeanFlow(num_classes=3, guidance_interval=(0.2, 0.5))


class DropoutRecorder(nn.Module):
    """A net with dropout that records, per call, whether all labels were null and whether dropout was on."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes, self.calls = num_classes, []
        self.drop, self.lin = nn.Dropout(0.5), nn.Linear(2, 2)

    def forward(self, x, t, h=None, labels=None):
        self.calls.append((bool((labels == self.num_classes).all()), self.drop.training))
        return self.drop(self.lin(x))


@pytest.mark.parametrize("module_cls", [OTMeanFlow, OTNeuralFlowMatching])
def test_guidance_reference_predictions_run_without_dropout(module_cls):
    """MeanFlow's CFG takes the unconditional prediction from the net in eval mode (no dropout), while
    the trained prediction keeps dropout; the net's mode is restored."""
    net = DropoutRecorder(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = module_cls(net=net, num_classes=3, guidance_scale=2.0, label_dropout=0.1)
    m.train()
    g = torch.Generator().manual_seed(0)
    m.loss(Pair(torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])))
    assert (True, False) in net.calls and (False, True) in net.calls, net.calls  # null: eval; trained: train
    assert all(training for null, training in net.calls if not null)
    assert all(not training for null, training in net.calls if null)
    assert all(mod.training for mod in m.modules())


def test_nfm_guidance_refuses_batch_norm_whose_eval_reference_would_use_running_statistics():
    net = ResidualFlowMap(nn.Sequential(nn.BatchNorm1d(2)))
    with pytest.raises(ValueError, match="guidance_scale=2.0 with a net holding a BatchNorm1d.*use GroupNorm"):
        OTNeuralFlowMatching(net=net, num_classes=3, guidance_scale=2.0)
    OTNeuralFlowMatching(net=net)  # without guidance batch norm is the user's choice


def test_nfm_guided_target_and_label_dropout():
    class Map(nn.Module):  # F(x, t | label) = x + 10 for the null label, x + label otherwise
        def forward(self, x, t, labels):
            return x + torch.where(labels == 4, 10.0, labels.float())[:, None]

    m = OTNeuralFlowMatching(net=Map(), num_classes=4, guidance_scale=3.0, label_dropout=0.2, endpoint_weight=0.0)
    m.train()
    m.time_generator = lambda: torch.Generator().manual_seed(0)  # the drops' draws, independent of test order
    labels = torch.arange(4).repeat(500)
    seen = m.condition(Pair(torch.zeros(2000, 2), torch.zeros(2000, 2), labels))
    dropped = seen != labels
    assert 0.17 < dropped.float().mean() < 0.23  # the label_dropout share, drawn per row
    assert (seen[dropped] == 4).all()  # dropped rows get the null label
    m.eval()
    assert torch.equal(m.condition(Pair(torch.zeros(4, 2), torch.zeros(4, 2), labels[:4])), labels[:4])
    x_t = torch.ones(3, 2)
    target = m.guided(x_t, m.flow_map(torch.zeros(3, 2), torch.ones(3), m.null_labels(3)), torch.tensor([0, 1, 4]))
    torch.testing.assert_close(target, torch.tensor([[-17.0] * 2, [-17.0] * 2, [1.0] * 2]))  # 10 + 3 (1 - 10)


def fit_conditional(module, steps: int, seed: int = 0, coupling: str = "exact") -> None:
    pl.seed_everything(seed)
    data = OTPairDataModule(blobs(4000, 0), val_target=blobs(256, 1), coupling=coupling, batch_size=256, conditional=True)
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, data)


@pytest.mark.parametrize("module_cls, coupling", [(OTMeanFlow, "exact"), (OTNeuralFlowMatching, "exact"), (OTNeuralFlowMatching, "online")])
def test_conditional_model_generates_the_requested_class(module_cls, coupling):
    module = module_cls(num_classes=3, lr=3e-3, time_dist="uniform")
    fit_conditional(module, 300, coupling=coupling)
    module.eval()
    labels = torch.arange(3).repeat_interleave(200)
    x = module.generate(600, generator=torch.Generator().manual_seed(1), labels=labels)
    nearest = torch.cdist(x, CENTRES).argmin(1)
    accuracy = (nearest == labels).float().mean()
    assert accuracy > 0.95, accuracy
    # and each class keeps its spread (blob std 0.3; measured 0.28-0.32 for OT-NFM, 0.36-0.47 for OT-MF after
    # 300 steps), not collapsed to its mean as OT-NFM is without OT pairing (0.03-0.09)
    spread = torch.stack([x[labels == k].std(0) for k in range(3)])
    assert ((spread > 0.2) & (spread < 0.6)).all(), spread
    # evaluation asks for balanced classes
    assert torch.equal(eval_labels(module, 3, 9), torch.tensor([0, 1, 2, 0, 1, 2]))


def test_nfm_guidance_moves_class_means_omega_times_as_far_from_the_unconditional_mean():
    """Folded guidance: the minimiser is F_null + omega (F_c - F_null), so with omega = 3 each class
    mean sits 3x as far from the unconditional output's mean as without guidance (beyond its data:
    OT-NFM's guidance extrapolates, and warns so)."""
    offsets = {}
    for omega in (1.0, 3.0):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = OTNeuralFlowMatching(num_classes=3, lr=3e-3, guidance_scale=omega, label_dropout=0.2)
        assert any("extrapolates" in str(w.message) for w in caught) == (omega > 1)
        fit_conditional(module, 300)
        module.eval()
        x0 = torch.randn(600, 2, generator=torch.Generator().manual_seed(3))
        labels = torch.arange(3).repeat_interleave(200)
        mean_free = module.sample(x0).mean(0)
        x = module.sample(x0, labels=labels)
        offsets[omega] = torch.stack([(x[labels == k].mean(0) - mean_free).norm() for k in range(3)])
    ratio = offsets[3.0] / offsets[1.0]  # measured 2.9-3.1
    assert ((ratio > 2.4) & (ratio < 3.6)).all(), offsets


def test_callbacks_generate_balanced_classes():
    module = OTMeanFlow(net=TimeMLP(2, 16, 1, 2, num_classes=3), num_classes=3)
    seen = []
    module.sample = lambda x0, steps, labels: seen.append(labels) or x0
    list(generate(module, 5, 12, 1, seed=0, chunk=4))
    assert torch.cat(seen).tolist() == [i % 3 for i in range(5, 12)]


def test_sample_writer_saves_the_labels_of_a_conditional_model(tmp_path):
    from otflow_lightning import SampleWriter

    module = OTMeanFlow(net=TimeMLP(2, 16, 1, 2, num_classes=3), num_classes=3)
    asked = []
    sample = module.sample
    module.sample = lambda x0, steps=1, labels=None: asked.append(labels.cpu()) or sample(x0, steps, labels)
    val = blobs(100, 1)
    data = OTPairDataModule(blobs(512, 0), val_target=val, coupling="exact", batch_size=32, conditional=True)
    writer = SampleWriter(str(tmp_path))
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[writer])
    trainer.predict(module, data)
    saved = torch.load(writer.last_path)
    assert saved["samples"].shape == (100, 2) and saved["labels"].dtype == torch.long
    assert torch.equal(saved["labels"], torch.cat(asked))  # the classes the samples were generated for
    assert torch.equal(saved["labels"], val.tensors[1][saved["index"]])  # C2OT pairs within a class
    # an unconditional model's file has no labels
    trainer.predict(OTMeanFlow(), OTPairDataModule(blobs(512, 0), val_target=val, coupling="exact", batch_size=32))
    assert set(torch.load(writer.last_path)) == {"samples", "index"}


def test_conditional_config_errors():
    data = OTPairDataModule(blobs(512, 0), coupling="exact", batch_size=64)
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="data.conditional=true"):
        trainer.fit(OTMeanFlow(num_classes=3), data)
    data = OTPairDataModule(blobs(512, 0), coupling="exact", batch_size=64, conditional=True)
    with pytest.raises(ValueError, match="model.num_classes"):
        trainer.fit(OTMeanFlow(), data)
    with pytest.raises(ValueError, match="label dropout"):
        OTNeuralFlowMatching(num_classes=3, label_dropout=0.0, guidance_scale=2.0)
    with pytest.raises(ValueError, match="num_classes"):
        OTMeanFlow(guidance_scale=2.0)
    module = OTNeuralFlowMatching(num_classes=2)
    with pytest.raises(ValueError, match="num_classes > 2"):
        module.condition(Pair(torch.zeros(3, 2), torch.zeros(3, 2), torch.tensor([0, 1, 2])))
    with pytest.raises(ValueError, match="unconditional"):
        OTNeuralFlowMatching().sample(torch.zeros(3, 2), labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        module.sample(torch.zeros(3, 2), labels=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="unconditional"):
        ResidualFlowMap(TimeMLP(2, 8, 1, 1))(torch.zeros(3, 2), 1.0, labels=torch.zeros(3, dtype=torch.long))


def test_conditional_unet_jvp_with_labels_matches_finite_differences():
    torch.manual_seed(0)
    m = OTMeanFlow(net=UNet(in_channels=1, preset="tiny", num_times=2, num_classes=10).double(), data_shape=(1, 8, 8), num_classes=10)
    z, v = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.randn(2, 1, 8, 8, dtype=torch.float64)
    for p in m.parameters():  # the zero-initialised output layers would make the check trivial
        nn.init.normal_(p, std=0.2)
    t, e, labels = torch.tensor([0.2, 0.5], dtype=torch.float64), torch.tensor([0.6, 0.9], dtype=torch.float64), torch.tensor([3, 10])
    u, target = m.meanflow_target(z, t, e, v, labels)
    eps = 1e-6
    fd = (m.average_velocity(z + eps * v, t + eps, e, labels) - m.average_velocity(z - eps * v, t - eps, e, labels)) / (2 * eps)
    torch.testing.assert_close(target, v + (e - t)[:, None, None, None] * fd, rtol=1e-5, atol=1e-6)
    other = m.average_velocity(z, t, e, torch.tensor([4, 10]))
    assert not torch.allclose(other[0], u[0]) and torch.allclose(other[1], u[1])  # labels change the output


def test_float_labels_are_refused_in_training():
    """Float labels (e.g. regression targets passed as labels) are not truncated into classes silently."""
    model = OTMeanFlow(num_classes=2)
    pair = Pair(torch.randn(8, 2), torch.randn(8, 2), labels=torch.tensor([0.6, 1.1] * 4))
    with pytest.raises(ValueError, match="labels must be integer class indices, got dtype torch.float32"):
        model.training_step(pair, 0)


def test_soft_label_cost_logs_and_warns_the_pairs_that_cross_classes():
    """With a float label_weight the noise of a crossing pair takes its target's label (the C2OT skew);
    the data module logs that share and warns once when it exceeds 1%."""
    import types
    import warnings

    from otflow_lightning.ot import OTCoupler

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(1024) % 2
    x = torch.randn(1024, 2, generator=g) * 0.5 + torch.stack([4.0 * labels - 2.0, torch.zeros(1024)], 1)
    data = TensorDataset(x, labels)

    def crossings(label_weight):
        dm = OTPairDataModule(target=data, batch_size=1024, conditional=True, seed=0,
                              coupling=OTCoupler("exact", label_weight=label_weight))
        dm.trainer = types.SimpleNamespace(training=True, global_rank=0, global_step=0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pair = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
        return pair.stats.get("coupling/label_crossings"), [w for w in caught if "cross classes" in str(w.message)]

    low, warned = crossings(0.5)
    assert low > 0.2 and len(warned) == 1  # pairs cross at a weight below the class distance (16)
    high, warned = crossings(100.0)
    assert high == 0.0 and not warned
    assert crossings(None) == (None, [])  # strict matching never crosses: no statistic
