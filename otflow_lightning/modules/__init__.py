"""LightningModules: OT-MF and OT-NFM on the shared one-step base."""

from .base import OneStepModule
from .meanflow import OTMeanFlow
from .nfm import OTNeuralFlowMatching

__all__ = ["OneStepModule", "OTMeanFlow", "OTNeuralFlowMatching"]
