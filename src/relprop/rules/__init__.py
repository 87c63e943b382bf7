"""Per-layer relevance rules, one module per family."""

from .lrp import AffineRule, AlphaBeta, Epsilon, Flat, Gamma, Pass, WSquare, ZBox, ZPlus, ZRule

__all__ = ["AffineRule", "AlphaBeta", "Epsilon", "Flat", "Gamma", "Pass", "WSquare", "ZBox", "ZPlus", "ZRule"]
