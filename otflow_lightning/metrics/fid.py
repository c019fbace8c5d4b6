"""FID on torchmetrics' ``FrechetInceptionDistance``: the offline Inception weights, uint8
quantisation, and real statistics cached on disk.

The FID itself is torchmetrics' (states summed across ranks, so it is correct under DDP); this
module adds what it lacks for training-time evaluation: it never downloads by surprise (a clear
error says how to get the weights), it quantises generated images the way the literature does, and
it saves / loads the real features' sufficient statistics (sum, sum of outer products, count).
"""

from __future__ import annotations

import hashlib
import os

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

__all__ = [
    "INCEPTION_URL",
    "default_inception_path",
    "download_inception_weights",
    "images_to_uint8",
    "CachedRealFID",
    "build_fid",
    "extractor_fingerprint",
    "real_stats",
    "set_real_stats",
]

#: torch-fidelity's Inception-v3 (the TF FID network ported to PyTorch), as torchmetrics loads it
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
_REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


def default_inception_path() -> str:
    """Where torch-fidelity looks for the Inception weights: ``$TORCH_HOME/hub/checkpoints/``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(INCEPTION_URL))


def download_inception_weights(path: str | None = None) -> str:
    """Download the Inception weights (about 92 MB) to ``path`` (default :func:`default_inception_path`)."""
    path = path or default_inception_path()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not os.path.isfile(path):
        torch.hub.download_url_to_file(INCEPTION_URL, path)
    return path


def images_to_uint8(x: Tensor) -> Tensor:
    """Images in [-1, 1] to uint8 by rounding (``round((x + 1) * 127.5)``); uint8 passes unchanged."""
    if x.dtype == torch.uint8:
        return x
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class CachedRealFID(FrechetInceptionDistance):
    r"""torchmetrics' FID with a faster ``compute()`` for a fixed real set (states, updates and sync unchanged).

    .. math::  d^2 = \lVert\mu_r - \mu_g\rVert^2 + \operatorname{tr}\Sigma_r + \operatorname{tr}\Sigma_g
                     - 2 \sum_i \sqrt{\lambda_i\big(\Sigma_r^{1/2} \Sigma_g \Sigma_r^{1/2}\big)}

    The eigenvalues of :math:`\Sigma_r \Sigma_g` (torchmetrics: a general ``eigvals``) equal those
    of the symmetric :math:`\Sigma_r^{1/2} \Sigma_g \Sigma_r^{1/2}`; :math:`\Sigma_r^{1/2}` is computed
    once per real set, so each evaluation costs one symmetric ``eigvalsh`` (several times faster
    at 2048 features).
    """

    _sqrt_real: tuple | None = None

    def compute(self) -> Tensor:
        n_r, n_g = self.real_features_num_samples, self.fake_features_num_samples
        if n_r < 2 or n_g < 2:
            raise RuntimeError("FID needs at least two real and two generated samples")
        mu_r, mu_g = self.real_features_sum / n_r, self.fake_features_sum / n_g
        cov_r = (self.real_features_cov_sum - n_r * torch.outer(mu_r, mu_r)) / (n_r - 1)
        cov_g = (self.fake_features_cov_sum - n_g * torch.outer(mu_g, mu_g)) / (n_g - 1)
        key = (int(n_r), float(self.real_features_sum.sum()), float(self.real_features_cov_sum.trace()), cov_r.device)
        if self._sqrt_real is None or self._sqrt_real[0] != key:
            w, v = torch.linalg.eigh(cov_r)
            self._sqrt_real = (key, (v * w.clamp(min=0).sqrt()) @ v.T)
        root = self._sqrt_real[1]
        eig = torch.linalg.eigvalsh(root @ cov_g @ root).clamp(min=0)
        fid = (mu_r - mu_g).square().sum() + cov_r.trace() + cov_g.trace() - 2 * eig.sqrt().sum()
        return fid.to(getattr(self, "orig_dtype", torch.float32))


def check_feature_module(feature: nn.Module, input_shape: tuple[int, ...]) -> None:
    """``ValueError`` unless ``feature`` maps two uint8 images ``(2, *input_shape)`` to float features ``(2, d)``."""
    param = next(feature.parameters(), None)
    images = torch.zeros(2, *input_shape, dtype=torch.uint8, device=None if param is None else param.device)
    name = type(feature).__name__
    try:
        with torch.no_grad():
            out = feature(images)
    except (RuntimeError, TypeError) as err:
        shape = ", ".join(map(str, input_shape))
        raise ValueError(f"the FID feature module {name} fails on uint8 images of shape (n, {shape}): {err}; it "
                         "receives uint8 images in [0, 255], so convert inside it (x.float() / 255)") from err
    if not (torch.is_tensor(out) and out.is_floating_point() and out.ndim == 2 and out.shape[0] == 2):
        got = f"{tuple(out.shape)} {out.dtype}" if torch.is_tensor(out) else type(out).__name__
        raise ValueError(f"the FID feature module {name} must return float features (n, d), got {got}; flatten "
                         "its output (e.g. end it with nn.Flatten())")


def build_fid(
    feature: int | nn.Module = 2048,
    weights_path: str | None = None,
    antialias: bool = False,
    input_shape: tuple[int, ...] = (3, 299, 299),
) -> CachedRealFID:
    """A :class:`CachedRealFID` that takes uint8 images and keeps its real statistics on ``reset()``.

    Args:
        feature: Inception feature size (64, 192, 768, 2048: torch-fidelity's ``inception-v3-compat``)
            or a custom module mapping uint8 images ``(n, *input_shape)`` to features ``(n, d)``.
        weights_path: Inception weights file; default the torch hub cache, never downloaded here.
        antialias: torchmetrics' antialiased resize; ``False`` (TF1-compatible bilinear) gives
            numbers comparable with the literature.
        input_shape: image shape a custom module receives (to infer its feature size when it has
            no ``num_features`` attribute).

    Raises:
        FileNotFoundError: the Inception weights are missing, with how to get them.
    """
    if isinstance(feature, nn.Module):
        check_feature_module(feature, tuple(input_shape))
        return CachedRealFID(feature, reset_real_features=False, normalize=False, input_img_size=tuple(input_shape))
    path = weights_path or default_inception_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"FID needs torch-fidelity's Inception weights, not found at {path!r} (nothing is downloaded at "
            "training time). Get them once on a machine with internet:\n"
            "    python -c 'from otflow_lightning.metrics import download_inception_weights as d; print(d())'\n"
            f"or download {INCEPTION_URL} yourself and pass its path as weights_path; or pass a custom "
            "feature module as feature."
        )
    return CachedRealFID(
        feature, reset_real_features=False, normalize=False, feature_extractor_weights_path=path, antialias=antialias
    )


def extractor_fingerprint(fid: FrechetInceptionDistance) -> str:
    """A short hash of the feature extractor: its class, its feature size and every weight."""
    h = hashlib.sha1(type(fid.inception).__qualname__.encode())
    h.update(str(getattr(fid.inception, "features_list", "")).encode())
    h.update(str(getattr(fid.inception, "use_antialias", "")).encode())
    for name, value in sorted(fid.inception.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def real_stats(fid: FrechetInceptionDistance) -> dict[str, Tensor]:
    """The real features' statistics (sum, sum of outer products, count) held by ``fid``."""
    return {name: getattr(fid, name).detach().clone() for name in _REAL_STATES}


def set_real_stats(fid: FrechetInceptionDistance, stats: dict[str, Tensor] | None) -> None:
    """Set ``fid``'s real statistics; ``None`` sets zeros.

    Under DDP the states are summed at ``compute()``, so exactly one rank must hold the statistics
    and the others zeros, or the real set counts once per rank.
    """
    for name in _REAL_STATES:
        current = getattr(fid, name)
        value = torch.zeros_like(current) if stats is None else stats[name].to(current.device, current.dtype)
        setattr(fid, name, value)
