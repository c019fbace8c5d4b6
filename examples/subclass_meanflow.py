"""Subclass OT-MF in your own project: your network, your loss weight, your time sampler.

Run it with the ``otflow`` command (the working directory is importable):

    otflow fit --config configs/toy.yaml --model examples.subclass_meanflow.HuberMeanFlow --trainer.max_steps 2000

or from Python: ``python examples/subclass_meanflow.py``. Reload with
``HuberMeanFlow.load_from_checkpoint(path)``: the class comes back as itself.
"""

from typing import Sequence

import torch
from torch import nn

from otflow_lightning import OTMeanFlow


class ResidualMLP(nn.Module):
    """An average-velocity net ``net(z, t, h)``: any forward-mode-AD-safe module works."""

    def __init__(self, dim: int = 2, width: int = 256):
        super().__init__()
        self.inp = nn.Linear(dim + 2, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(width, width)) for _ in range(3))
        self.out = nn.Linear(width, dim)

    def forward(self, z, t, h):
        x = self.inp(torch.cat([z, t[:, None], h[:, None]], dim=1))
        for block in self.blocks:
            x = x + block(x)
        return self.out(x)


class HuberMeanFlow(OTMeanFlow):
    """OT-MF with a residual MLP, a pseudo-Huber loss weight and more weight on long intervals."""

    # defaults as explicit parameters: under the otflow CLI, jsonargparse passes the parent's defaults
    # explicitly, so a kwargs.setdefault(...) here would never take effect
    def __init__(self, width: int = 256, data_shape: Sequence[int] = (2,), **kwargs):
        super().__init__(net=ResidualMLP(data_shape[0], width), data_shape=data_shape, **kwargs)
        self.save_hyperparameters()

    def loss_weight(self, sq_error):
        # pseudo-Huber: d/d(err) sqrt(err + c) = 1 / (2 sqrt(err + c)), i.e. adaptive weighting with p = 1/2
        return 0.5 / torch.sqrt(sq_error.detach() + self.adaptive_c)

    def sample_times(self, n):
        # halve every start time t: the interval rows (e > t) get longer jumps, closer to the one-step use;
        # the flow-matching rows (e = t, a 1 - interval_fraction share) stay flow matching, at the halved t
        t, e = super().sample_times(n)
        same = e == t
        t = t * 0.5
        return t, torch.where(same, t, e)


if __name__ == "__main__":
    import lightning.pytorch as pl

    from otflow_lightning import OTPairDataModule, WassersteinCallback

    data = OTPairDataModule(target="moons", source="8gaussians", coupling="exact", batch_size=256)
    model = HuberMeanFlow(source="8gaussians", lr=3e-3, time_dist="uniform")
    trainer = pl.Trainer(max_steps=1000, val_check_interval=500, check_val_every_n_epoch=None,
                         callbacks=[WassersteinCallback()], logger=False, enable_checkpointing=False)
    trainer.fit(model, data)
    print("1-step W2^2:", float(trainer.callback_metrics["val/w2_sq"]))
