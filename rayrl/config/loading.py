"""Loading a config (schema defaults <- YAML file <- dotted overrides, the last wins) and the command line,
every failure as a one-line `ConfigError` naming the key, the option or the file at fault."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import typing
from collections.abc import Iterator
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from rayrl.config.schema import CheckpointConfig, ConfigError, RayRLConfig, check_fields, validate


def load_config(config_path: str | None, overrides: list[str]) -> RayRLConfig:
    """Schema defaults <- YAML file <- `a.b=c` overrides (the last wins), resolved and validated."""
    cfg = OmegaConf.structured(RayRLConfig)
    assignments = list(_leaves(_read_yaml(config_path))) if config_path is not None else []
    for override in overrides:
        assignments += _leaves(_parse_override(override))
    _use_checkpoint_schema(cfg, assignments)
    for key, value in assignments:
        _assign(cfg, key, value)
    try:
        loaded = OmegaConf.to_object(cfg)  # resolves interpolations, checks their types
    except MissingMandatoryValue as e:
        raise ConfigError(f"{e.full_key}: has no value (???)") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{e.full_key or 'config'}: {_first_line(e)}") from None
    assert isinstance(loaded, RayRLConfig)
    validate(loaded)
    return loaded


MANAGER_KEY = "runner.checkpoint.manager_class"
_CHECKPOINT = "runner.checkpoint."


def _use_checkpoint_schema(cfg: DictConfig, assignments: list[tuple[str, Any]]) -> None:
    """A custom checkpoint manager may extend `runner.checkpoint` with keys of its own (its `config_class`,
    a CheckpointConfig subclass). The loader does not import the manager: when the assignments name one
    (last, as a literal), it keeps the keys of `runner.checkpoint` it does not know as they are, and
    `with_checkpoint_schema` checks them against the manager's schema when the manager is chosen."""
    named = [value for key, value in assignments if key == MANAGER_KEY]
    if named and named[-1] is not None:
        OmegaConf.set_struct(cfg.runner.checkpoint, False)


def with_checkpoint_schema(cfg: RayRLConfig, schema: type[CheckpointConfig]) -> RayRLConfig:
    """The config with `runner.checkpoint` as an instance of `schema` (a custom manager's `config_class`):
    the keys the loader kept without knowing them are type-checked now; ConfigError naming the first bad key."""
    current = cfg.runner.checkpoint
    if type(current) is schema and vars(current).keys() == {f.name for f in dataclasses.fields(schema)}:
        return cfg
    node = OmegaConf.structured(schema)
    for name, value in vars(current).items():
        try:
            OmegaConf.update(node, name, value, merge=True)
        except (ConfigKeyError, ConfigAttributeError):
            close = difflib.get_close_matches(name, [f.name for f in dataclasses.fields(schema)], n=1)
            hint = f" (did you mean {_CHECKPOINT}{close[0]}?)" if close else ""
            raise ConfigError(f"{_CHECKPOINT}{name}: unknown key{hint}") from None
        except OmegaConfBaseException as e:
            raise ConfigError(f"{_CHECKPOINT}{name}: {_first_line(e)} (got {value!r})") from None
    try:
        checkpoint = OmegaConf.to_object(node)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{_CHECKPOINT}{e.full_key or 'config'}: {_first_line(e)}") from None
    check_fields(checkpoint, _CHECKPOINT)
    return dataclasses.replace(cfg, runner=dataclasses.replace(cfg.runner, checkpoint=checkpoint))


def _read_yaml(path: str) -> dict[Any, Any]:
    """The YAML file as a plain nested dict, every failure as a ConfigError naming the file."""
    try:
        loaded = OmegaConf.load(path)
    except FileNotFoundError:
        raise ConfigError(f"--config: file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"--config: cannot read {path}: {e.strerror}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"--config: invalid YAML in {path}{where}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--config: invalid YAML in {path}: {' '.join(str(e).split())}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"--config: {path}: {e.full_key}: {_first_line(e)}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"--config: {path}: the top level must be a mapping (runner: ..., actor: ...)")
    container = OmegaConf.to_container(loaded, resolve=False)
    assert isinstance(container, dict)
    return container


_DOTTED_KEY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _parse_override(override: str) -> dict[Any, Any]:
    """`a.b=value` as a nested dict; the value is parsed as YAML, exactly as OmegaConf's dotlist does."""
    key, eq, _ = override.partition("=")
    if not eq:
        hint = f" (did you mean --config {override}?)" if override.endswith((".yaml", ".yml")) else ""
        raise ConfigError(f"override {override!r}: expected key=value{hint}")
    if not _DOTTED_KEY.fullmatch(key):
        raise ConfigError(f"override {override!r}: {key!r} is not a dotted key like runner.max_steps")
    try:
        parsed = OmegaConf.to_container(OmegaConf.from_dotlist([override]), resolve=False)
    except yaml.YAMLError:
        raise ConfigError(f"{key}: cannot parse the value in override {override!r}") from None
    except OmegaConfBaseException as e:  # e.g. a malformed ${...} interpolation
        raise ConfigError(f"{key}: {_first_line(e)}") from None
    assert isinstance(parsed, dict)
    return parsed


def _leaves(tree: dict[Any, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Flatten nested mappings into (dotted key, value) pairs, so each error can name its exact key."""
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            yield from _leaves(v, key + ".")
        else:
            yield key, v


def _assign(cfg: DictConfig, key: str, value: Any) -> None:
    """Set one dotted key; OmegaConf checks the key exists and the value converts to the field's type."""
    try:
        OmegaConf.update(cfg, key, value, merge=True)
    except OmegaConfBaseException as e:
        raise _translate(e, key, value) from None


def _translate(e: OmegaConfBaseException, key: str, value: Any) -> ConfigError:
    """OmegaConf's multi-line exception as a one-line ConfigError naming the most precise key."""
    where = e.full_key or key
    if not where.startswith(key.split(".")[0]):  # inside a list of mappings: OmegaConf names the item's key only
        return ConfigError(f"{key}: {where}: {_first_line(e)}")
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)):
        parent, _, name = where.rpartition(".")
        schema = _schema_type(parent) if parent else RayRLConfig
        known = [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else []
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {parent + '.' if parent else ''}{close[0]}?)" if close else ""
        return ConfigError(f"{where}: unknown key{hint}")
    expected = _schema_type(where)
    if isinstance(e, ValidationError) and expected is not None:
        got = value
        if key.startswith(where + "."):  # e.g. actor.world_size.x=1: the bad value is {x: 1}
            for part in reversed(key[len(where) + 1 :].split(".")):
                got = {part: got}
        return ConfigError(f"{where}: expected {_type_name(expected)} (got {got!r})")
    return ConfigError(f"{where}: {_first_line(e)}")


def _schema_type(key: str) -> Any:
    """The annotated type of a dotted key in the schema, or None when there is no such key."""
    tp: Any = RayRLConfig
    for part in key.split("."):
        if not dataclasses.is_dataclass(tp):
            return None
        tp = typing.get_type_hints(tp).get(part)
    return tp


def _type_name(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    args = typing.get_args(tp)
    if type(None) in args:  # Optional[X]
        return f"{_type_name(next(a for a in args if a is not type(None)))} or null"
    return getattr(tp, "__name__", str(tp))


def _first_line(e: OmegaConfBaseException) -> str:
    """OmegaConf appends 'full_key: ...' etc. on further lines; keep only the message itself."""
    return (e.msg or str(e)).strip().splitlines()[0]


# --------------------------------------------------------------------------------------------- CLI

_USAGE_EPILOG = """\
overrides:
  dotted keys of the config, e.g. runner.max_steps=50 actor.world_size=4; they are applied after the
  YAML file, in order, and the last one wins. Values are parsed as YAML (null, true, 1e-3, ...) and may
  use interpolation, e.g. 'runner.log_path=${runner.output_dir}/x'.

exit status:
  0 done; 2 bad config or usage; 1 the run failed after its restart budget (run_main.sh relaunches it);
  3 a program error (an exception in rayrl's or your code: not retried); 75 stopped by a preemption
  notice after saving (relaunched by run_main.sh); 130 interrupted by the user.
"""


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of printing and exiting, so the CLI owns exit codes."""

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="rayrl",
        description="Fault-tolerant GRPO post-training on Ray.",
        epilog=_USAGE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--config", metavar="PATH", help="YAML file of the job (default: built-in defaults)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    return parser


def parse_args(argv: list[str]) -> tuple[str | None, list[str]]:
    """`[--config PATH] [key=value ...]` -> (config path or None, overrides).

    -h/--help prints usage and raises SystemExit(0); bad usage raises ConfigError.
    """
    args = _parser().parse_intermixed_args(argv)
    return args.config, list(args.overrides)
