"""The run's checkpoint manager: the class ``runner.checkpoint.manager_class`` names, checked against the
protocol, and its config (the class's ``config_class``).

This module sits above both ``rayrl.config`` and ``rayrl.checkpoint``, which know nothing of each other:
the config loader keeps the ``runner.checkpoint`` keys a custom manager adds without importing the
manager, and they are checked here, when the manager is chosen. The driver does that before anything
runs, so a bad class or key exits 2 naming it; the coordinator does it again to build the manager.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any

from rayrl.checkpoint.manager import CheckpointManager, DefaultCheckpointManager
from rayrl.config import MANAGER_KEY, CheckpointConfig, ConfigError, RayRLConfig, with_checkpoint_schema


def resolve_manager(cfg: RayRLConfig) -> tuple[type, RayRLConfig]:
    """The manager class and the config with ``runner.checkpoint`` under that class's schema
    (ConfigError naming the class or the key at fault)."""
    cls = load_manager_class(cfg.runner.checkpoint.manager_class)
    return cls, with_checkpoint_schema(cfg, manager_config_class(cls))


def build_manager(cls: type, cfg: RayRLConfig, checkpoint_dir: str) -> Any:
    """``Cls(config, checkpoint_dir)``: the protocol's one way to build a manager."""
    return cls(cfg.runner.checkpoint, checkpoint_dir)


def load_manager_class(path: str | None) -> type:
    """The manager class named by ``runner.checkpoint.manager_class`` (default when None), checked
    against the protocol; raises ConfigError naming the class and what is missing."""
    if path is None:
        return DefaultCheckpointManager
    key = MANAGER_KEY
    if not isinstance(path, str):
        raise ConfigError(f"{key}: expected a dotted path 'pkg.module.Class' (got {path!r})")
    module_name, _, cls_name = path.rpartition(".")
    if not module_name:
        raise ConfigError(f"{key}: {path!r} is not a dotted path 'pkg.module.Class'")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except Exception as err:  # noqa: BLE001 -- whatever the user's module raises while importing
        raise ConfigError(f"{key}: cannot import {path!r}: {type(err).__name__}: {err}") from None
    if not inspect.isclass(cls):
        raise ConfigError(f"{key}: {path!r} is not a class")
    required = [m for m in _protocol_methods() if not callable(getattr(cls, m, None))]
    if required:
        raise ConfigError(f"{key}: {path} does not implement the CheckpointManager protocol "
                         f"(missing: {', '.join(required)})")
    try:
        inspect.signature(cls).bind(None, "checkpoints")
    except TypeError as err:
        raise ConfigError(f"{key}: {path} cannot be built as {cls_name}(config, checkpoint_dir): {err}") from None
    except ValueError:  # no signature to inspect (a C extension): trust it
        pass
    manager_config_class(cls)
    return cls


def manager_config_class(manager_cls: type) -> type[CheckpointConfig]:
    """The schema of ``runner.checkpoint`` for this manager class: its ``config_class`` (a dataclass
    subclassing ``rayrl.config.CheckpointConfig`` that adds the manager's own keys), else CheckpointConfig."""
    schema = getattr(manager_cls, "config_class", CheckpointConfig)
    if not (inspect.isclass(schema) and issubclass(schema, CheckpointConfig) and dataclasses.is_dataclass(schema)):
        raise ConfigError(f"{MANAGER_KEY}: {manager_cls.__module__}.{manager_cls.__qualname__}.config_class "
                          f"must be a dataclass subclassing rayrl.config.CheckpointConfig (got {schema!r})")
    return schema


def _protocol_methods() -> list[str]:
    return [n for n, v in vars(CheckpointManager).items() if callable(v) and not n.startswith("_")]
