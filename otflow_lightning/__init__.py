"""otflow-lightning: one-step generative models trained with optimal-transport couplings.

Public API::

    from otflow_lightning import OTMeanFlow, OTNeuralFlowMatching, OTPairDataModule, OTCoupler
"""

from .callbacks import FIDCallback, SampleWriter, SamplingCallback, WassersteinCallback
from .data import OTPairDataModule, Pair
from .modules import OneStepModule, OTMeanFlow, OTNeuralFlowMatching
from .ot import OnlineCoupling, OTCoupler

__version__ = "0.1.0"

__all__ = [
    "OTMeanFlow",
    "OTNeuralFlowMatching",
    "OneStepModule",
    "OTPairDataModule",
    "Pair",
    "OTCoupler",
    "OnlineCoupling",
    "FIDCallback",
    "SampleWriter",
    "SamplingCallback",
    "WassersteinCallback",
]
