"""Per-layer relevance rules, one module per family."""

from .lrp import AffineRule, AlphaBeta, Contrastive, Epsilon, Flat, Gamma, Pass, WSquare, ZBox, ZPlus, ZRule

__all__ = [
    "AffineRule", "AlphaBeta", "Contrastive", "Epsilon", "Flat", "Gamma", "Pass", "WSquare", "ZBox", "ZPlus", "ZRule",
]
