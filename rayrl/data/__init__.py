"""Datasets and rewards: tasks (datasets), prompts (text or chat messages), rewards (the built-in reward
functions), reward_fns (reward functions by dotted path), scoring (calling them), loader (resumable batches).

Nothing is re-exported here: the driver imports ``tasks`` and ``reward_fns`` to validate a config and must
not pay for the loader's torch import."""
