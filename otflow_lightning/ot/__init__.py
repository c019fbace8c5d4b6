"""Minibatch optimal transport: costs, assignment solvers and the ``OTCoupler``."""

from .costs import label_mismatch, pair_cost, squared_euclidean
from .coupler import Coupling, OTCoupler, check_batch
from .online import OnlineCoupling
from .solvers import SOLVERS

__all__ = ["OTCoupler", "OnlineCoupling", "Coupling", "SOLVERS", "check_batch", "squared_euclidean", "pair_cost", "label_mismatch"]
