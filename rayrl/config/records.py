"""The config as a run records it (trainer_state.json, the loggers) and compares it on resume; where its
checkpoints go."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import yaml

from rayrl.config.schema import RayRLConfig


REDACTED = "<redacted>"


def config_to_dict(cfg: RayRLConfig) -> dict[str, Any]:
    """The config as plain JSON-able data (for trainer_state.json, the loggers), with the values of
    ``runner.checkpoint.storage_options`` (credentials, possibly) replaced by ``REDACTED``."""
    data = dataclasses.asdict(cfg)
    options = data["runner"]["checkpoint"].get("storage_options")
    if options:
        data["runner"]["checkpoint"]["storage_options"] = {key: REDACTED for key in options}
    return data


def trainer_state(cfg: RayRLConfig, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint records of the run besides the workers' state (trainer_state.json): the step, its
    metrics line (and from it the samples consumed, the epoch and the sizes it ran with), the config in force
    and the versions that wrote it."""
    import platform

    import ray
    import torch

    import rayrl

    return {
        "global_step": step, "consumed_samples": metrics["consumed_samples"], "epoch": metrics["epoch"],
        "metrics": metrics,
        "world_sizes": {"actor": metrics["actor_world_size"], "rollout": metrics["rollout_workers"]},
        "config": config_to_dict(cfg),
        "versions": {"rayrl": rayrl.__version__, "torch": torch.__version__, "ray": ray.__version__,
                     "python": platform.python_version()},
    }


def checkpoint_dir(cfg: RayRLConfig) -> str:
    """Where the run's checkpoints go: ``runner.checkpoint.dir``, else ``<runner.log_path>/checkpoints``."""
    from rayrl.checkpoint.format import CHECKPOINTS_DIR

    return cfg.runner.checkpoint.dir or os.path.join(cfg.runner.log_path, CHECKPOINTS_DIR)


# Keys a resumed run may set differently from its checkpoint without it being a change of the training:
# where the run writes and how it was started.
RESUME_EXEMPT_KEYS = ("runner.experiment_name", "runner.output_dir", "runner.log_path", "runner.resume_dir",
                      "runner.resume_mode", "runner.checkpoint.dir", "runner.checkpoint.storage_options")


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, list[Any]]:
    """Dotted keys whose value differs between a checkpoint's config (trainer_state.json) and the current
    one, as ``{key: [saved, current]}`` (``"<absent>"`` for a key one side lacks), ``RESUME_EXEMPT_KEYS``
    left out. Both sides as JSON has them, so tuples and lists compare equal."""
    import json

    def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(tree, dict) or not tree:
            return {prefix[:-1]: tree}
        return {k: v for key, value in tree.items() for k, v in flat(value, f"{prefix}{key}.").items()}

    old, new = flat(json.loads(json.dumps(saved))), flat(json.loads(json.dumps(current)))
    absent = "<absent>"
    return {key: [old.get(key, absent), new.get(key, absent)] for key in sorted(old.keys() | new.keys())
            if key not in RESUME_EXEMPT_KEYS and not key.startswith(_EXEMPT_PREFIXES)
            and old.get(key, absent) != new.get(key, absent)}


_EXEMPT_PREFIXES = tuple(f"{key}." for key in RESUME_EXEMPT_KEYS)  # the keys inside a mapping


def config_to_yaml(cfg: RayRLConfig) -> str:
    """The resolved config as YAML, in schema order."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
