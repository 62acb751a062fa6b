"""rayrl: a fault-tolerant GRPO post-training runtime on Ray."""

__version__ = "0.1.0"
