r"""OT-NFM: ODE-free neural flow matching on coupled pairs (one network call generates).

The network *is* the flow map :math:`F_\theta(x_0, t)` (a neural flow, :math:`F(x_0, 0) = x_0` by
construction; see :mod:`otflow_lightning.nets.flows`), regressed onto the linear interpolant of
coupled pairs :math:`(x_0, x_1) \sim \pi`:

.. math::  \mathcal{L} = \mathbb{E}_{\pi,\, t}\, \tfrac{1}{d} \|F_\theta(x_0, t) - x_t\|^2
           + w_1\, \mathbb{E}_\pi \tfrac{1}{d} \|F_\theta(x_0, 1) - x_1\|^2, \qquad x_t = (1 - t) x_0 + t x_1 ,

the squared error averaged over the :math:`d` = ``prod(data_shape)`` data dimensions (per sample,
then over the batch; OT-MF's loss sums over them instead).

Its minimiser is :math:`F^*(x_0, t) = (1 - t) x_0 + t\, \mathbb{E}_\pi[x_1 \mid x_0]`, so one call
:math:`F(x_0, 1) = \mathbb{E}_\pi[x_1 \mid x_0]` generates. **Mean collapse** (the paper's Theorem 1):
under the independent coupling :math:`\pi = p_0 \otimes p_1` that conditional mean is the data mean
for every :math:`x_0`, so all samples collapse to one point; the map is non-degenerate only when
:math:`\mathbb{E}_\pi[x_1 \mid x_0]` varies with :math:`x_0`, which a deterministic (Monge) coupling
guarantees. Minibatch OT gives a batch-blurred map; persistent couplings
(:class:`~otflow_lightning.ot.OnlineCoupling`) sharpen it.

**Classifier-free guidance**, folded into training: a labelled row regresses onto
:math:`\mathrm{sg}(F(x_0, t \mid \varnothing)) + \omega\,(x_t - \mathrm{sg}(F(x_0, t \mid \varnothing)))`,
whose minimiser is the guided map :math:`F_\varnothing + \omega\,(F_c - F_\varnothing)`: one call
still generates. Unlike guidance of a velocity (OT-MF), this does not sharpen a class: the map sees
only :math:`x_0`, and under the C2OT coupling :math:`F_\varnothing(x_0, 1)` is the regression onto
all classes, so :math:`\omega > 1` moves each class's samples by about
:math:`(\omega - 1)(\mu_c - \bar\mu)` beyond its data (class means :math:`\mu_c`, their mixture
:math:`\bar\mu`). Keep ``guidance_scale=1`` unless that extrapolation is what you want.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from ..data.datamodule import Pair
from ..nets.flows import ResidualFlowMap
from ..nets.mlp import TimeMLP
from .base import (
    OneStepModule,
    check_net_output,
    check_time_dist,
    check_vector_data,
    draw_times,
    eval_mode,
    hparams_ignore,
    in_dtype_of,
    running_batch_norm,
)

__all__ = ["OTNeuralFlowMatching", "variance_ratio"]


def variance_ratio(generated: Tensor, target: Tensor) -> Tensor:
    """Total variance of ``generated`` over that of ``target`` (both ``(n, ...)``): near 0 is mean collapse."""
    return generated.flatten(1).var(0).sum() / target.flatten(1).var(0).sum().clamp_min(1e-12)


class OTNeuralFlowMatching(OneStepModule):
    """OT-NFM: a neural-flow map ``F(x0, t)`` regressed onto the interpolant of OT-coupled pairs.

    The network is the flow map, called ``net(x, t)`` with ``x`` ``(n, *data_shape)`` and ``t``
    ``(n,)``; it must satisfy ``net(x, 0) == x`` (every map in :mod:`otflow_lightning.nets.flows`
    does by construction). :meth:`sample` is one call ``F(x0, 1)``; maps with an ``inverse(y, t)``
    (``ResNetFlow``, ``AffineCouplingFlow``) also give :meth:`inverse`, data -> source in one call.
    Validation logs ``val/var_ratio`` (generated over target variance; near 0 means mean collapse).

    Extension points for subclasses: :meth:`flow_map` (how the net is called), :meth:`sample_times`
    (the ``(n,)`` regression times), :meth:`trial_output` (the output :meth:`check_net` checks before
    training, including ``F(x, 0) = x``; ``None`` skips the checks), :attr:`supported_steps` (default
    ``(1,)``, checked by :meth:`check_steps`; widen it with a few-step :meth:`sample` of your own),
    :meth:`as_pair` (batches of another form than ``Pair``).

    Args:
        net: the flow map; default :class:`~otflow_lightning.nets.ResidualFlowMap` around a 3x256
            :class:`~otflow_lightning.nets.TimeMLP`.
        time_dist: ``uniform`` or ``logit_normal`` sampler of the regression time ``t``.
        time_mean, time_std: logit-normal parameters.
        endpoint_weight: weight ``w_1`` of the extra ``t = 1`` term (0 turns it off); it costs a
            second forward pass on the batch.
        source, data_shape, lr, weight_decay, betas, warmup_steps, lr_schedule, num_classes,
            label_dropout, guidance_scale: as in :class:`OneStepModule`.
    """

    supported_steps = (1,)
    # an image net, named when model.data_shape and the data's differ
    image_net_hint = "ResidualFlowMap(UNet(in_channels={c}, num_times=1)) (see configs/cifar_nfm.yaml)"

    def __init__(
        self,
        net: nn.Module | None = None,
        source: str = "gaussian",
        data_shape: Sequence[int] = (2,),
        time_dist: str = "uniform",
        time_mean: float = 0.0,
        time_std: float = 1.0,
        endpoint_weight: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        lr_schedule: str = "constant",
        num_classes: int | None = None,
        label_dropout: float = 0.1,
        guidance_scale: float = 1.0,
    ) -> None:
        check_time_dist(time_dist, time_std)
        if endpoint_weight < 0:
            raise ValueError(f"endpoint_weight must be >= 0, got {endpoint_weight}")
        if net is None:
            check_vector_data(data_shape, "ResidualFlowMap(UNet(in_channels=C, num_times=1))")
            net = ResidualFlowMap(TimeMLP(dim=math.prod(data_shape), num_times=1, num_classes=num_classes))
        super().__init__(
            net, source, data_shape, lr=lr, weight_decay=weight_decay, betas=betas, warmup_steps=warmup_steps,
            lr_schedule=lr_schedule, num_classes=num_classes, label_dropout=label_dropout, guidance_scale=guidance_scale,
        )
        if guidance_scale > 1.0:
            rank_zero_warn(
                f"OTNeuralFlowMatching(guidance_scale={guidance_scale}) extrapolates each class's one-step samples "
                "away from the unconditional map's output, beyond the class's data (about (omega - 1) x the distance "
                "from the mean of all classes to the class's mean); it does not sharpen classes as MeanFlow's guidance "
                "does. Use guidance_scale=1 for samples on the data"
            )
        norm = running_batch_norm(net)
        if guidance_scale != 1.0 and norm is not None:
            raise ValueError(
                f"guidance_scale={guidance_scale} with a net holding a {type(norm).__name__}: the guided target's "
                "unconditional reference runs in eval mode (no dropout), where batch norm uses running statistics "
                "while the trained prediction uses the batch's; use GroupNorm or LayerNorm, or guidance_scale=1"
            )
        self.save_hyperparameters(ignore=hparams_ignore())
        self.time_dist, self.time_mean, self.time_std = time_dist, time_mean, time_std
        self.endpoint_weight = endpoint_weight

    # ---------------------------------------------------------------- training
    def trial_output(self, x: Tensor, labels: Tensor | None) -> Tensor:
        return self.flow_map(x, torch.zeros(x.shape[0], device=x.device, dtype=x.dtype), labels)

    def check_net(self) -> tuple[Tensor, Tensor] | None:
        """The base checks, and that the net is a flow map: ``F(x, 0) = x`` (e.g. not a bare net
        without :class:`~otflow_lightning.nets.ResidualFlowMap`). A subclass whose
        :meth:`trial_output` returns ``None`` skips both (returns ``None``)."""
        checked = super().check_net()
        if checked is None:  # the subclass defines no trial
            return None
        x, out = checked
        off = float((out - x).abs().max())
        if not off <= 1e-3 * max(1.0, float(x.abs().max())):
            raise ValueError(
                f"the net ({type(self.net).__name__}) is not a flow map: max |F(x, 0) - x| = {off:.3g}, but OT-NFM needs "
                "F(x, 0) = x; wrap it: ResidualFlowMap(net) (in a config: class_path: otflow_lightning.nets."
                "ResidualFlowMap, init_args: {net: ...}), or use ResNetFlow / AffineCouplingFlow"
            )
        return x, out

    def sample_times(self, n: int) -> Tensor:
        """Regression times ``(n,)`` in [0, 1] from ``time_dist``."""
        return draw_times((n,), self.time_dist, self.time_mean, self.time_std, self.time_generator(), self.device)

    def flow_map(self, x0: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """``F(x0, t)`` (given ``labels``, if conditional): ``(n, *data_shape)``."""
        return self.net(x0, t) if labels is None else self.net(x0, t, labels=labels)

    def loss(self, pair: Pair) -> tuple[Tensor, dict[str, Tensor]]:
        x0, x1, labels = pair.x0, pair.x1, self.condition(pair)
        n = x0.shape[0]
        t = self.sample_times(n)
        if self.endpoint_weight > 0:  # one forward for both terms
            t = torch.cat([t, torch.ones_like(t)])
            x0, x1 = torch.cat([x0, x0]), torch.cat([x1, x1])
            labels = None if labels is None else torch.cat([labels, labels])
        tc = t.reshape((-1,) + (1,) * (x0.ndim - 1))
        x_t = (1 - tc) * x0 + tc * x1
        if labels is not None and self.guidance_scale != 1.0:
            with torch.no_grad(), eval_mode(self.net):  # the reference prediction without dropout
                x_t = self.guided(x_t, self.flow_map(x0, t, self.null_labels(len(t))), labels)
        mapped = self.flow_map(x0, t, labels)
        check_net_output(mapped, x_t)
        sq_error = (mapped - x_t).flatten(1).square().mean(1)
        flow = sq_error[:n].mean()
        if self.endpoint_weight == 0:
            return flow, {"flow_mse": flow.detach()}
        endpoint = sq_error[n:].mean()
        return flow + self.endpoint_weight * endpoint, {"flow_mse": flow.detach(), "endpoint_mse": endpoint.detach()}

    def validation_step(self, batch: Pair, batch_idx: int) -> None:
        pair = self._pair(batch)
        loss, _ = self.loss(pair)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(pair))
        # collapse detector: one-step samples of this batch's source against its targets
        if len(pair) < 2:  # no variance in one sample
            return
        labels = None if self.num_classes is None else pair.labels
        self.log("val/var_ratio", variance_ratio(self.sample(pair.x0, labels=labels), pair.x1), sync_dist=True, batch_size=len(pair))

    # ---------------------------------------------------------------- sampling
    def check_steps(self, steps: int) -> None:
        """As :meth:`OneStepModule.check_steps` (a subclass may widen :attr:`supported_steps` with its
        own few-step :meth:`sample`); for the one-step map, the error says why it cannot compose."""
        if self.supported_steps is not None and tuple(self.supported_steps) == (1,) and steps != 1:
            raise ValueError(
                f"{type(self).__name__}.sample supports only steps=1, got steps={steps}: the map always starts at "
                "time 0, so composing it (F(F(x0, 1/2), 1/2)) is not the flow. Evaluate with steps=1."
            )
        super().check_steps(steps)

    @torch.no_grad()
    def sample(self, x0: Tensor, steps: int = 1, labels: Tensor | None = None) -> Tensor:
        """One call of the map: ``F(x0, 1)``, ``x0`` ``(n, *data_shape)`` -> ``(n, *data_shape)``;
        ``labels`` ``(n,)``: classes to generate (``None``: the unconditional model)."""
        z, labels = self.sample_input(x0, steps, labels)
        with eval_mode(self):
            z = self.flow_map(z, torch.ones(z.shape[0], device=z.device, dtype=z.dtype), labels)
        return in_dtype_of(z, x0)

    @torch.no_grad()
    def inverse(self, x1: Tensor) -> Tensor:
        """Data -> source in one call, ``F(., 1)^{-1}(x1)``: ``(n, *data_shape)``. Needs an invertible map."""
        inverse = getattr(self.net, "inverse", None)
        if inverse is None:
            raise TypeError(
                f"inverse() needs an invertible flow map with an inverse(y, t) method (ResNetFlow, AffineCouplingFlow); "
                f"this module's net is a {type(self.net).__name__}"
            )
        z = self.as_batch(x1, "x1")
        with eval_mode(self):
            z = inverse(z, torch.ones(z.shape[0], device=z.device, dtype=z.dtype))
        return in_dtype_of(z, x1)
