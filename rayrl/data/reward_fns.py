"""Reward functions named by dotted path (``pkg.module:function``): which ones a run uses, and checking them.

``data.reward_fns: [{fn, weight}, ...]``, or the short form ``data.reward_fn: pkg.module:function``, or, with
neither, the task's built-in reward (a function in ``rayrl.data.rewards``). Each is imported and its
signature checked where the config is validated, so a typo stops the run before any worker starts.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

SIGNATURE = "fn(item: dict, response: str, response_ids: list[int]) -> float | dict[str, float]"


class RewardFnError(ValueError):
    """A reward path that does not import or a function that cannot take the reward arguments; the
    message starts with the config key at fault."""


@dataclass(frozen=True)
class RewardSpec:
    """One configured reward: its metric name, dotted path, weight and the config key that named it."""

    name: str
    path: str
    weight: float
    key: str

    def load(self) -> Callable[..., Any]:
        return load_reward_fn(self.path, self.key)


def load_reward_fn(path: str, key: str) -> Callable[..., Any]:
    """The function at ``pkg.module:function``; RewardFnError naming ``key`` when it does not import or
    cannot be called as ``fn(item, response, response_ids)``."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise RewardFnError(f"{key}: {path!r} is not a dotted path like pkg.module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 -- any import failure of user code is this config's problem
        raise RewardFnError(f"{key}: cannot import {module_name!r} ({type(err).__name__}: {err})") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise RewardFnError(f"{key}: module {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise RewardFnError(f"{key}: {path!r} is not a function")
    try:
        inspect.signature(fn).bind(None, None, None)
    except TypeError as err:
        raise RewardFnError(f"{key}: {path} cannot be called as {SIGNATURE} ({err})") from None
    except ValueError:  # a builtin without a signature: let the call decide
        pass
    return fn


def reward_specs(data_cfg: Any, task_reward: str) -> list[RewardSpec]:
    """The rewards a run scores with, in order (duck-typed DataConfig), each checked by loading it.

    Metric names are the function names (``reward/<name>``); a name used twice gets ``_2``, ``_3``..."""
    if data_cfg.reward_fns is not None and data_cfg.reward_fn is not None:
        raise RewardFnError("data.reward_fn: set data.reward_fn or data.reward_fns, not both")
    if data_cfg.reward_fns is not None:
        if not data_cfg.reward_fns:
            raise RewardFnError("data.reward_fns: empty; null uses the task's built-in reward")
        entries = [(e.fn, float(e.weight), f"data.reward_fns[{i}].fn") for i, e in enumerate(data_cfg.reward_fns)]
    elif data_cfg.reward_fn is not None:
        entries = [(data_cfg.reward_fn, 1.0, "data.reward_fn")]
    else:
        entries = [(task_reward, 1.0, "data.task")]
    specs: list[RewardSpec] = []
    for path, weight, key in entries:
        fn = load_reward_fn(path, key)
        base = getattr(fn, "__name__", path.rpartition(":")[2])
        name, k = base, 1
        while any(s.name == name for s in specs):
            k += 1
            name = f"{base}_{k}"
        specs.append(RewardSpec(name, path, weight, key))
    return specs
