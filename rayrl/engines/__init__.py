"""Generation engines behind one small interface (see base.py)."""

from rayrl.engines.base import GenerationEngine, Rollouts, make_engine

__all__ = ["GenerationEngine", "Rollouts", "make_engine"]
