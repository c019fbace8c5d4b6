"""LightningModules: OT-MF (and OT-NFM) on the shared one-step base."""

from .base import OneStepModule
from .meanflow import OTMeanFlow

__all__ = ["OneStepModule", "OTMeanFlow"]
