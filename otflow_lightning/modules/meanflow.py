r"""OT-MF: the MeanFlow objective on OT-paired samples.

**Time direction.** Public convention: source ``x0`` at t = 0, target ``x1`` at t = 1,
:math:`z_t = (1 - t) x_0 + t x_1`, velocity :math:`v = x_1 - x_0`. The network predicts the
*average velocity* from time ``t`` to a later time ``e`` (``e >= t``):

.. math::  u(z_t, t, e) = \frac{1}{e - t} \int_t^e v(z_\tau, \tau)\, d\tau,
           \qquad z_e = z_t + (e - t)\, u(z_t, t, e).

Differentiating :math:`(e - t) u = \int_t^e v` in ``t`` along the trajectory gives the MeanFlow
identity in this direction,

.. math::  u(z_t, t, e) = v(z_t, t) + (e - t) \frac{d}{dt} u(z_t, t, e),
           \qquad \frac{d}{dt} u = v \cdot \partial_z u + \partial_t u,

computed by one forward-mode JVP with tangents ``(v, 1, 0)`` for ``(z, t, e)``. The regression
target is :math:`\mathrm{sg}(v + (e - t)\, du/dt)`; one step generates :math:`x_1 = x_0 + u(x_0, 0, 1)`.

**Translation from MeanFlow's paper and code** (where t = 1 is noise, z = (1 - t) x + t eps, and
the network is called as ``u(z, t, t - r)`` with ``t >= r``): their ``(t, r)`` is our
``(1 - t, 1 - e)``; their interval ``t - r`` equals our ``e - t``; their
``x = eps - u(eps, 0, 1)`` is our ``x1 = x0 + u(x0, 0, 1)`` (our ``u`` is minus theirs); and since
``logit(1 - t) = -logit(t)``, their logit-normal mean ``mu`` is our ``-mu`` (same std). Their
ImageNet default ``LN(-0.4, 1.0)`` is ``time_mean=0.4`` here; their CIFAR ``LN(-2, 2)`` is
``time_mean=2.0``. The network sees ``(z, t, e - t)``: the two time embeddings of MeanFlow.

**Classifier-free guidance** (MeanFlow's, folded into training): for a labelled row the
instantaneous velocity in the target and in the JVP tangent is replaced by

.. math::  v_g = \omega\, v + \kappa\, u(z_t, t, t \mid c) + (1 - \omega - \kappa)\, u(z_t, t, t \mid \varnothing),

the two ``u`` from the net itself at ``e = t`` without gradient (null-label rows keep ``v``). The
net then learns the average velocity of the guided field, with effective scale
:math:`\omega / (1 - \kappa)`, and one call still generates. MeanFlow's optional guidance
interval limits this to rows with ``t`` in ``guidance_interval`` (the others keep ``v``); their
``[t_start, t_end]`` in noise-at-1 time is our ``(1 - t_end, 1 - t_start)``.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ..data.datamodule import Pair
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

__all__ = ["OTMeanFlow"]


class OTMeanFlow(OneStepModule):
    """OT-MF: MeanFlow trained on minibatch-OT pairs; one network call generates.

    The network is called ``net(z, t, h)`` with ``z`` ``(n, *data_shape)``, start time ``t`` and
    interval ``h = e - t``, both ``(n,)``; it must support ``torch.func.jvp`` (no BatchNorm, no
    flash attention).

    Extension points for subclasses: :meth:`sample_times` (the (t, e) sampler),
    :meth:`loss_weight` (adaptive weighting), :meth:`average_velocity` (how the net is called),
    :meth:`as_pair` (batches of another form than ``Pair``).

    Args:
        net: average-velocity network; default a 3x256 :class:`~otflow_lightning.nets.TimeMLP`.
        time_dist: ``logit_normal`` or ``uniform`` for the two time draws.
        time_mean: logit-normal mean **in the public direction** (MeanFlow's ``-P_mean``).
        time_std: logit-normal std.
        interval_fraction: fraction of samples with ``e != t`` (MeanFlow's ``1 - data_proportion``).
            The time defaults are MeanFlow's ImageNet setting. They rarely draw the one-step jump
            ``t ~ 0, e ~ 1``: on 2D data uniform times with ``interval_fraction=0.75``
            (``configs/toy.yaml``) give a far better one-step map (mean error to the exact OT map
            0.08 against 0.86 with the defaults after 1500 steps on a 2D Gaussian pair).
        fm_warmup_steps: first steps with all ``e = t`` (plain flow matching warm start).
        adaptive_p: power ``p`` of the adaptive weight ``1 / (||delta||^2 + c)^p`` (0 = plain MSE).
        adaptive_c: constant ``c`` of the adaptive weight.
        jvp_no_grad: predict with a normal forward and take ``du/dt`` from a JVP under
            ``no_grad`` (two passes, less memory: for large image nets; the only way bf16 autocast
            speeds up training, since the JVP itself always runs in fp32).
        guidance_kappa: MeanFlow's ``kappa``, the share of the net's own conditional velocity in the
            guided target (0: plain ``v_g = u_null + omega (v - u_null)``).
        guidance_interval: ``(lo, hi)``: guidance applies to rows whose start time ``t`` (public
            direction, 0 = source) lies in ``[lo, hi]``; the others train on the plain ``v``.
        source, data_shape, lr, weight_decay, betas, warmup_steps, lr_schedule, num_classes,
            label_dropout, guidance_scale: as in :class:`OneStepModule`.
    """

    # an image net, named when model.data_shape and the data's differ
    image_net_hint = "UNet(in_channels={c}, num_times=2) (see configs/digits.yaml)"

    def __init__(
        self,
        net: nn.Module | None = None,
        source: str = "gaussian",
        data_shape: Sequence[int] = (2,),
        time_dist: str = "logit_normal",
        time_mean: float = 0.4,
        time_std: float = 1.0,
        interval_fraction: float = 0.25,
        fm_warmup_steps: int = 0,
        adaptive_p: float = 1.0,
        adaptive_c: float = 1e-3,
        jvp_no_grad: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        lr_schedule: str = "constant",
        num_classes: int | None = None,
        label_dropout: float = 0.1,
        guidance_scale: float = 1.0,
        guidance_kappa: float = 0.0,
        guidance_interval: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        check_time_dist(time_dist, time_std)
        if not 0.0 <= interval_fraction <= 1.0:
            raise ValueError(f"interval_fraction must be in [0, 1], got {interval_fraction}")
        if not 0.0 <= guidance_kappa < 1.0 or (guidance_kappa and (num_classes is None or label_dropout == 0.0)):
            raise ValueError(
                f"guidance_kappa must be in [0, 1) and needs a class-conditional model trained with label dropout "
                f"(num_classes and label_dropout > 0), got guidance_kappa={guidance_kappa}"
            )
        interval = list(guidance_interval) if isinstance(guidance_interval, (list, tuple)) else []
        numbers_ = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in interval)
        if len(interval) != 2 or not numbers_ or not 0.0 <= interval[0] < interval[1] <= 1.0:
            raise ValueError(f"guidance_interval must be (lo, hi) with 0 <= lo < hi <= 1 (start times t, 0 = source), "
                             f"got {guidance_interval!r}")
        lo, hi = interval
        if (lo, hi) != (0.0, 1.0) and guidance_scale == 1.0 and guidance_kappa == 0.0:
            raise ValueError(f"guidance_interval={guidance_interval!r} limits guidance, but the model is not guided "
                             "(guidance_scale 1, guidance_kappa 0): set guidance_scale, or leave the interval (0, 1)")
        if net is None:
            check_vector_data(data_shape, "UNet(in_channels=C, num_times=2)")
            net = TimeMLP(dim=math.prod(data_shape), num_times=2, num_classes=num_classes)
        norm = running_batch_norm(net)
        if norm is not None:
            raise ValueError(
                f"the net holds a {type(norm).__name__}, whose running-statistics update in training breaks the JVP "
                "(torch.func.jvp refuses in-place updates of captured tensors): use GroupNorm or LayerNorm instead"
            )
        super().__init__(
            net, source, data_shape, lr=lr, weight_decay=weight_decay, betas=betas, warmup_steps=warmup_steps,
            lr_schedule=lr_schedule, num_classes=num_classes, label_dropout=label_dropout, guidance_scale=guidance_scale,
        )
        self.guidance_kappa, self.guidance_interval = guidance_kappa, (float(lo), float(hi))
        self.save_hyperparameters(ignore=hparams_ignore())
        self.time_dist, self.time_mean, self.time_std = time_dist, time_mean, time_std
        self.interval_fraction, self.fm_warmup_steps = interval_fraction, fm_warmup_steps
        self.adaptive_p, self.adaptive_c, self.jvp_no_grad = adaptive_p, adaptive_c, jvp_no_grad

    # ---------------------------------------------------------------- pieces
    def average_velocity(self, z: Tensor, t: Tensor, e: Tensor, labels: Tensor | None = None) -> Tensor:
        """``u(z, t, e)``: average velocity from ``t`` to ``e`` (``(n,)`` each) at ``z``, given ``labels``."""
        return self.net(z, t, e - t) if labels is None else self.net(z, t, e - t, labels=labels)

    def trial_output(self, x: Tensor, labels: Tensor | None) -> Tensor:
        zero = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        return self.average_velocity(x, zero, zero, labels)

    def sample_times(self, n: int) -> tuple[Tensor, Tensor]:
        """Draw start and end times ``(t, e)``, each ``(n,)``, with ``0 <= t <= e <= 1``.

        Two independent draws from ``time_dist``, sorted; a ``1 - interval_fraction`` share (all of
        them during ``fm_warmup_steps``) gets ``e = t``.
        """
        gen = self.time_generator()
        a = draw_times((2, n), self.time_dist, self.time_mean, self.time_std, gen, self.device)
        t, e = a.min(0).values, a.max(0).values
        fraction = 0.0 if self.global_step < self.fm_warmup_steps else self.interval_fraction
        same = torch.rand(n, device=self.device, generator=gen) >= fraction
        return t, torch.where(same, t, e)

    def loss_weight(self, sq_error: Tensor) -> Tensor:
        """Adaptive weight ``sg(1 / (sq_error + c)^p)`` per sample (``sq_error``: ``(n,)``)."""
        return 1.0 / (sq_error.detach() + self.adaptive_c) ** self.adaptive_p

    def guided_velocity(self, z: Tensor, t: Tensor, v: Tensor, labels: Tensor | None) -> Tensor:
        """The velocity ``v_g`` of the guided field (see the module docstring); ``v`` when unguided."""
        if labels is None or (self.guidance_scale == 1.0 and self.guidance_kappa == 0.0):
            return v
        n = z.shape[0]
        with torch.no_grad(), eval_mode(self.net):  # the reference predictions without dropout (MeanFlow's)
            if self.guidance_kappa:
                both = self.average_velocity(torch.cat([z, z]), torch.cat([t, t]), torch.cat([t, t]),
                                             torch.cat([self.null_labels(n), labels]))
                u_null, u_cond = both[:n], both[n:]
            else:
                u_null = self.average_velocity(z, t, t, self.null_labels(n))
        v_g = self.guided(v, u_null, labels)
        if self.guidance_kappa:
            v_g = v_g + self.guidance_kappa * self.labelled(labels, z.ndim) * (u_cond - u_null)
        lo, hi = self.guidance_interval
        if (lo, hi) != (0.0, 1.0):
            inside = ((t >= lo) & (t <= hi)).reshape((-1,) + (1,) * (z.ndim - 1))
            v_g = torch.where(inside, v_g, v)
        return v_g

    def meanflow_target(self, z: Tensor, t: Tensor, e: Tensor, v: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Prediction ``u(z, t, e)`` and the stop-gradient target ``v + (e - t) du/dt`` (``labels``: the condition)."""
        shape = (-1,) + (1,) * (z.ndim - 1)
        average_velocity = functools.partial(self.average_velocity, labels=labels)
        tangents = (v, torch.ones_like(t), torch.zeros_like(e))
        # forward-mode AD under autocast fails (conv tangents keep fp32, weights are cast): the JVP
        # runs in fp32; with jvp_no_grad the gradient pass alone uses the mixed precision
        fp32 = torch.autocast(z.device.type, enabled=False)
        if self.jvp_no_grad:
            devices = [z.device] if z.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):  # the JVP pass redraws the same dropout masks
                u = average_velocity(z, t, e)
            with torch.no_grad(), fp32:
                _, dudt = torch.func.jvp(average_velocity, (z, t, e), tangents)
        else:
            with fp32:
                u, dudt = torch.func.jvp(average_velocity, (z, t, e), tangents)
        check_net_output(u, z)
        target = v + (e - t).reshape(shape) * dudt
        return u, target.detach()

    def loss(self, pair: Pair) -> tuple[Tensor, dict[str, Tensor]]:
        x0, x1 = pair.x0, pair.x1
        t, e = self.sample_times(x0.shape[0])
        shape = (-1,) + (1,) * (x0.ndim - 1)
        z = (1 - t.reshape(shape)) * x0 + t.reshape(shape) * x1
        labels = self.condition(pair)
        v = self.guided_velocity(z, t, x1 - x0, labels)
        u, target = self.meanflow_target(z, t, e, v, labels)
        sq_error = (u - target).reshape(u.shape[0], -1).square().sum(1)
        loss = (self.loss_weight(sq_error) * sq_error).mean()
        return loss, {"mse": sq_error.mean().detach() / math.prod(self.data_shape)}

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, x0: Tensor, steps: int = 1, labels: Tensor | None = None) -> Tensor:
        """Map ``x0`` ``(n, *data_shape)`` to the target in ``steps`` average-velocity jumps.

        ``z_e = z_t + (e - t) u(z_t, t, e)`` on a uniform grid of ``steps`` intervals; ``steps=1``
        is one network call: ``x0 + u(x0, 0, 1)``. ``labels`` ``(n,)``: classes to generate
        (guided, if trained with ``guidance_scale``); ``None``: the unconditional model.
        """
        z, labels = self.sample_input(x0, steps, labels)
        grid = torch.linspace(0.0, 1.0, steps + 1, device=z.device, dtype=z.dtype)
        with eval_mode(self):
            for t, e in zip(grid[:-1], grid[1:]):
                tt, ee = t.expand(z.shape[0]), e.expand(z.shape[0])
                z = z + (e - t) * self.average_velocity(z, tt, ee, labels)
        return in_dtype_of(z, x0)
