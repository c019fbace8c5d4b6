"""DDP on 2 CPU processes (gloo): the image pipeline's ranks draw different noise and stay in sync.

``ddp_spawn`` starts the workers with ``torch.multiprocessing`` (no re-launch of pytest). The U-Net's
JVP runs on the inner network inside ``training_step``, which Lightning calls through the DDP
wrapper, so gradients are all-reduced: with different noise and data per rank, identical weights
after a few steps show that the sync happened.
"""

import lightning.pytorch as pl
import pytest
import torch

from otflow_lightning import OTMeanFlow, OTPairDataModule
from otflow_lightning.nets import UNet


class RecordRanks(pl.Callback):
    """Each rank saves its first source batch, its time-generator seed and its final weights."""

    def __init__(self, folder: str) -> None:
        self.folder, self.first = folder, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first is None:
            self.first = {"x0": batch.x0.detach().clone(), "index": batch.index.clone(),
                          "time_seed": pl_module.time_generator().initial_seed(), "cost": batch.stats["coupling/cost"]}

    def on_train_end(self, trainer, pl_module) -> None:
        weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        torch.save({**self.first, "weights": weights}, f"{self.folder}/rank{trainer.global_rank}.pt")


@pytest.mark.parametrize("global_coupling", [False, True])
def test_two_cpu_ranks_differ_in_noise_and_agree_in_weights(tmp_path, monkeypatch, global_coupling):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # read by the spawned workers; 2 ranks share the CPU
    pl.seed_everything(0)
    model = OTMeanFlow(UNet(1, preset="tiny"), data_shape=(1, 8, 8), time_mean=0.4, lr=1e-2)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    data = OTPairDataModule(target="digits", coupling="exact", batch_size=16, global_coupling=global_coupling)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=3, limit_val_batches=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[RecordRanks(str(tmp_path))], default_root_dir=str(tmp_path),
    )
    trainer.fit(model, data)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert not torch.allclose(r0["x0"], r1["x0"])  # per-rank source noise
    assert r0["time_seed"] != r1["time_seed"]  # per-rank times
    # DistributedSampler shards; a global match is a permutation of the world batch, so it keeps them disjoint
    assert set(r0["index"].tolist()).isdisjoint(r1["index"].tolist())
    # one match of the world batch: both ranks log its cost; per-rank matches have their own
    assert (r0["cost"] == r1["cost"]) == global_coupling, (r0["cost"], r1["cost"])
    moved = 0.0
    for name, w0 in r0["weights"].items():
        torch.testing.assert_close(w0, r1["weights"][name], rtol=0, atol=1e-6)
        moved = max(moved, (w0 - initial[name]).abs().max().item())
    assert moved > 1e-3  # the steps did train
