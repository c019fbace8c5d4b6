"""otflow-lightning: one-step generative models trained with optimal-transport couplings.

Public API::

    from otflow_lightning import OTMeanFlow, OTPairDataModule, OTCoupler
"""

from .callbacks import FIDCallback, SamplingCallback, WassersteinCallback
from .data import OTPairDataModule, Pair
from .modules import OneStepModule, OTMeanFlow
from .ot import OTCoupler

__version__ = "0.1.0"

__all__ = [
    "OTMeanFlow",
    "OneStepModule",
    "OTPairDataModule",
    "Pair",
    "OTCoupler",
    "FIDCallback",
    "SamplingCallback",
    "WassersteinCallback",
]
