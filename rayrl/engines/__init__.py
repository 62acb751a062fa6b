"""Generation engines behind one small interface (see base.py); the rollout worker picks one."""

from rayrl.engines.base import GenerationEngine, Rollouts

__all__ = ["GenerationEngine", "Rollouts"]
