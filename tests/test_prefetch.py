"""``OTPairDataModule(prefetch_coupling=True)``: the next batch is paired in a worker thread during the step."""

import threading

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import TensorDataset

from otflow_lightning.data import OTPairDataModule
from otflow_lightning.ot import OTCoupler


class Recorder(pl.LightningModule):
    """A one-parameter model that keeps every Pair it trains on; ``on_step`` runs inside training_step."""

    def __init__(self, on_step=None):
        super().__init__()
        self.shift = torch.nn.Parameter(torch.zeros(2))
        self.pairs, self.on_step = [], on_step

    def training_step(self, pair, batch_idx):
        self.pairs.append(pair)
        if self.on_step is not None:
            self.on_step(self.global_step)
        return (pair.x0 + self.shift - pair.x1).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(dm, model, max_steps, ckpt_path=None, root=None, **options):
    pl.seed_everything(0)  # the loader's shuffling draws from the global RNG
    trainer = pl.Trainer(max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, default_root_dir=root, **options)
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return trainer


def labelled():
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (256,), generator=g)
    return TensorDataset(torch.randn(256, 2, generator=g) + 3.0 * y[:, None], y)


def assert_same_pairs(a, b):
    assert len(a) == len(b) > 0
    for p, q in zip(a, b):
        assert torch.equal(p.x0, q.x0) and torch.equal(p.x1, q.x1) and torch.equal(p.index, q.index)
        assert (p.labels is None and q.labels is None) or torch.equal(p.labels, q.labels)
        assert p.stats["coupling/cost"] == q.stats["coupling/cost"]


def worker_threads():
    return [t for t in threading.enumerate() if t.name.startswith("otflow-coupling")]


TOY = dict(target="moons", source="8gaussians", toy_size=256)
CASES = {  # data module options, trainer options
    "toy": (TOY, {}),
    "conditional": (dict(target=labelled(), conditional=True), {}),
    "epochs_cut_short": (TOY, dict(limit_train_batches=3)),  # each epoch leaves a queued batch unused
    "ot_batch_size": (dict(TOY, ot_batch_size=128), {}),  # each OT batch of 128 served as two training batches
    "ot_batch_cut_short": (dict(TOY, ot_batch_size=128), dict(limit_train_batches=3)),  # epochs end inside an OT batch
}


@pytest.mark.parametrize("case", CASES)
def test_prefetched_pairs_are_identical(case):
    data, trainer_options = CASES[case]
    runs = {}
    for prefetch in (False, True):
        dm = OTPairDataModule(**data, coupling="exact", batch_size=64, seed=0, prefetch_coupling=prefetch)
        model = Recorder()
        fit(dm, model, max_steps=10, **trainer_options)  # 4 batches per epoch: epoch ends, then a stop mid-epoch
        fit(dm, model, max_steps=3, **trainer_options)  # the same data module in a second fit
        runs[prefetch] = model.pairs
    assert_same_pairs(runs[False], runs[True])
    assert not torch.equal(runs[True][0].x0, runs[True][4].x0)  # fresh noise every batch, also across epochs
    if case == "conditional":
        assert runs[True][0].labels is not None
    assert worker_threads() == []  # teardown ended the worker


def test_resume_from_checkpoint_gives_the_same_pairs(tmp_path):
    runs, first = {}, {}
    for prefetch in (False, True):
        make = lambda: OTPairDataModule(**TOY, batch_size=64, seed=0, prefetch_coupling=prefetch)
        first[prefetch] = Recorder()
        trainer = fit(make(), first[prefetch], max_steps=6, root=tmp_path)
        path = tmp_path / f"prefetch{prefetch}.ckpt"
        trainer.save_checkpoint(path)
        resumed = Recorder()
        fit(make(), resumed, max_steps=10, ckpt_path=path, root=tmp_path)
        runs[prefetch] = resumed.pairs
    assert len(runs[True]) == 4
    assert_same_pairs(runs[False], runs[True])
    # the source generator is keyed by the step: the resumed run draws fresh noise, not step 0's again
    assert not any(torch.equal(runs[True][0].x0, pair.x0) for pair in first[True].pairs)


class SignallingCoupler(OTCoupler):
    """Exact coupler that sets ``started[i]`` when its i-th solve begins, or raises at solve ``fail_at``."""

    def __init__(self, fail_at=None):
        super().__init__("exact")
        self.started = [threading.Event() for _ in range(64)]
        self.calls, self.fail_at = 0, fail_at

    def couple(self, *args, **kwargs):
        if self.calls == self.fail_at:
            raise RuntimeError(f"solver exploded at solve {self.calls}")
        self.started[self.calls].set()
        self.calls += 1
        return super().couple(*args, **kwargs)


@pytest.mark.parametrize("prefetch", [False, True])
def test_next_solve_runs_during_the_step(prefetch):
    """Step k waits until the solve of batch k + 1 has started: only a prefetching data module gets there."""
    coupler, overlapped = SignallingCoupler(), []
    timeout = 10.0 if prefetch else 0.2
    model = Recorder(on_step=lambda step: overlapped.append(coupler.started[step + 1].wait(timeout)))
    dm = OTPairDataModule("moons", source="8gaussians", toy_size=256, coupling=coupler, batch_size=64, seed=0, prefetch_coupling=prefetch)
    fit(dm, model, max_steps=3 if prefetch else 1)
    assert overlapped == ([True] * 3 if prefetch else [False])


def test_next_ot_batch_is_solved_during_the_steps_of_the_current_one():
    """ot_batch_size=128 at batch_size=64: both steps of OT batch k run while OT batch k + 1 is being solved."""
    coupler, overlapped = SignallingCoupler(), []
    model = Recorder(on_step=lambda step: overlapped.append(coupler.started[step // 2 + 1].wait(10.0)))
    dm = OTPairDataModule("moons", source="8gaussians", toy_size=512, coupling=coupler, batch_size=64, ot_batch_size=128,
                          seed=0, prefetch_coupling=True)
    fit(dm, model, max_steps=5)
    assert overlapped == [True] * 5
    assert coupler.calls <= 4  # one solve per OT batch (3 trained on, at most one queued ahead)
    assert all(len(p) == 64 for p in model.pairs)


def test_worker_errors_surface_with_their_message():
    dm = OTPairDataModule("moons", toy_size=256, coupling=SignallingCoupler(fail_at=2), batch_size=64, seed=0, prefetch_coupling=True)
    with pytest.raises(RuntimeError, match="solver exploded at solve 2"):
        fit(dm, Recorder(), max_steps=5)
    assert worker_threads() == []


@pytest.mark.parametrize(
    "options",
    [dict(coupling="online"), dict(global_coupling=True), dict(source_data=TensorDataset(torch.randn(256, 2)))],
    ids=["online", "global", "source_data"],
)
def test_unsupported_combinations_are_clear_errors(options):
    with pytest.raises(ValueError, match="prefetch_coupling=True .*set prefetch_coupling=False"):
        OTPairDataModule("moons", batch_size=64, prefetch_coupling=True, **options)
    OTPairDataModule("moons", batch_size=64, **options)  # fine without prefetching


class SaveIndices(pl.Callback):
    def __init__(self, folder):
        self.folder, self.index = folder, []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.index.append(batch.index)

    def on_train_end(self, trainer, module):
        torch.save(torch.cat(self.index), f"{self.folder}/rank{trainer.global_rank}.pt")


def test_ddp_ranks_keep_their_shards(tmp_path, monkeypatch):
    """Lightning re-creates the prefetching loader with a DistributedSampler: the ranks' batches are disjoint."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    dm = OTPairDataModule(**TOY, batch_size=32, seed=0, prefetch_coupling=True)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=3, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[SaveIndices(str(tmp_path))], default_root_dir=str(tmp_path))
    trainer.fit(Recorder(), dm)
    i0, i1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert len(i0) == len(i1) == 3 * 32 and len(set(i0.tolist()) | set(i1.tolist())) == 6 * 32
