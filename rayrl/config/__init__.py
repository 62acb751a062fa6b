"""The rayrl config: its schema and validation (`schema`), loading from YAML and dotted overrides and the
command line (`loading`), and what a run records of it (`records`). Import the names from here."""

from rayrl.config.loading import MANAGER_KEY, load_config, parse_args, with_checkpoint_schema
from rayrl.config.records import (
    REDACTED, RESUME_EXEMPT_KEYS, checkpoint_dir, config_changes, config_to_dict, config_to_yaml, trainer_state,
)
from rayrl.config.schema import (
    FILE_TASKS, LOGGERS, ActorConfig, AlgorithmConfig, CheckpointConfig, ConfigError, DataConfig, ModelConfig,
    OptimConfig, RayRLConfig, ReferenceConfig, RewardFnConfig, RolloutConfig, RunnerConfig, validate,
)

__all__ = [
    "FILE_TASKS", "LOGGERS", "MANAGER_KEY", "REDACTED", "RESUME_EXEMPT_KEYS", "ActorConfig", "AlgorithmConfig",
    "CheckpointConfig", "ConfigError", "DataConfig", "ModelConfig", "OptimConfig", "RayRLConfig",
    "ReferenceConfig", "RewardFnConfig", "RolloutConfig", "RunnerConfig", "checkpoint_dir", "config_changes",
    "config_to_dict", "config_to_yaml", "load_config", "parse_args", "trainer_state", "validate",
    "with_checkpoint_schema",
]
