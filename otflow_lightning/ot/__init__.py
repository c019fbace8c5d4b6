"""Minibatch optimal transport: costs, assignment solvers, the ``OTCoupler``, conditional and cross-rank coupling."""

from .conditional import draw_source_labels
from .costs import label_mismatch, pair_cost, squared_euclidean
from .coupler import Coupling, OTCoupler, auto_method, check_batch
from .distributed import couple_batch
from .online import OnlineCoupling
from .solvers import SOLVERS, Solution, register_solver

__all__ = [
    "OTCoupler",
    "OnlineCoupling",
    "Coupling",
    "Solution",
    "SOLVERS",
    "register_solver",
    "auto_method",
    "check_batch",
    "couple_batch",
    "draw_source_labels",
    "squared_euclidean",
    "pair_cost",
    "label_mismatch",
]
