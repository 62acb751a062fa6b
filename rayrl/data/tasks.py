"""Tasks with verifiable rewards: a dataset of prompt items plus the dotted path of the task's built-in reward.

Items are plain dicts ({"prompt", "answer", ...}: every column of a dataset row) so they travel through Ray
and checkpoints as-is. A prompt is text or a list of chat messages (rendered on the rollout side). The
reward of a response is a function of the item and the response (rayrl.data.reward_fns); TASK_REWARDS
names each task's built-in one, used when the config names none.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from rayrl.data.prompts import prompt_problem
from rayrl.data.reward_fns import RewardSpec, reward_specs


class Task(Protocol):
    name: str

    def build_dataset(self, num_samples: int, seed: int) -> list[dict]: ...


@dataclass(frozen=True)
class CyclicPatternTask:
    """Prompt "<pattern>:"; the response should repeat a pattern cyclically for answer_length characters.

    copy_pattern (fixed_char None): the pattern to repeat is the prompt's own random pattern, so the model
    has to read the prompt. repeat_token (fixed_char set): every answer is that one character repeated,
    whatever the prompt; an easy task for fast tests.
    """

    name: str
    pattern_length: int
    fixed_char: str | None = None
    alphabet: str = "abcdef"
    answer_length: int = 12

    def __post_init__(self) -> None:
        if self.pattern_length < 1:
            raise ValueError(f"data.pattern_length must be >= 1, got {self.pattern_length}")

    def build_dataset(self, num_samples: int, seed: int) -> list[dict]:
        rng = random.Random(seed)
        items = []
        for _ in range(num_samples):
            shown = "".join(rng.choice(self.alphabet) for _ in range(self.pattern_length))
            target = self.fixed_char or shown
            answer = (target * (self.answer_length // len(target) + 1))[: self.answer_length]
            items.append({"prompt": f"{shown}:", "answer": answer, "pattern": target})
        return items


def _read_jsonl(path: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"data.path={path!r} line {lineno} is not valid JSON: {exc}") from exc
    return rows


def _read_parquet(path: str) -> list[dict]:
    if importlib.util.find_spec("pyarrow") is not None:
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    import pandas as pd

    return pd.read_parquet(path).to_dict("records")


def _load_hf_dataset(path: str) -> list[dict]:
    import datasets

    return list(datasets.load_dataset(path, split="train"))


@dataclass(frozen=True)
class FileTask:
    """Rows of a local jsonl or parquet file or a HF dataset; by default rewarded by math_exact_match.

    Every column of a row goes into its item (and so to the reward function); the prompt column
    (data.prompt_key) becomes "prompt" and must be text or chat messages. The answer column
    (data.answer_key) is required only by the built-in reward (``needs_answer``), which reads it as text: a
    bare number or a full solution ending in `#### N`. Rows are checked here, before training: a bad one is
    an error naming the file, the row (1-based) and the key. The whole source is used (data.num_samples only
    sizes generated datasets) in file order; the loader shuffles.
    """

    name: str
    path: str
    prompt_key: str
    answer_key: str
    read: Callable[[str], list[dict]]
    needs_answer: bool

    def build_dataset(self, num_samples: int, seed: int) -> list[dict]:
        items = [self._item(i, row) for i, row in enumerate(self.read(self.path), start=1)]
        if not items:
            raise ValueError(f"data.path={self.path!r} holds no rows")
        return items

    def _item(self, row_number: int, row: Any) -> dict:
        where = f"data.path={self.path!r} row {row_number}"
        if not isinstance(row, dict):
            raise ValueError(f"{where} is not an object of columns (got {type(row).__name__})")
        if self.prompt_key not in row:
            raise ValueError(f"{where} has no column data.prompt_key={self.prompt_key!r}")
        problem = prompt_problem(row[self.prompt_key])
        if problem is not None:
            raise ValueError(f"{where}: column data.prompt_key={self.prompt_key!r} {problem}")
        item = {**row, "prompt": row[self.prompt_key]}
        if self.needs_answer:
            if self.answer_key not in row:
                raise ValueError(f"{where} has no column data.answer_key={self.answer_key!r} "
                                 f"(the built-in reward needs it)")
            item["answer"] = str(row[self.answer_key])
        return item


def _math_task(
    name: str, read: Callable[[str], list[dict]], local_file: bool, needs: tuple[str, ...] = ()
) -> Callable[[Any], Task]:
    """Factory that checks the config (and optional packages, any one of `needs`) before any data is read."""

    def make(data_cfg: Any) -> Task:
        if not data_cfg.path:
            raise ValueError(f"data.path must be set for data.task={name}")
        if local_file and not os.path.isfile(data_cfg.path):
            raise ValueError(f"data.path={data_cfg.path!r} is not a file (data.task={name})")
        if needs and all(importlib.util.find_spec(pkg) is None for pkg in needs):
            raise ValueError(
                f"data.path={data_cfg.path!r}: data.task={name} needs the package {' or '.join(needs)};"
                f" pip install {needs[0]}"
            )
        needs_answer = data_cfg.reward_fns is None and data_cfg.reward_fn is None
        return FileTask(name, data_cfg.path, data_cfg.prompt_key, data_cfg.answer_key, read, needs_answer)

    return make


TASKS: dict[str, Callable[[Any], Task]] = {
    "copy_pattern": lambda cfg: CyclicPatternTask("copy_pattern", cfg.pattern_length),
    "repeat_token": lambda cfg: CyclicPatternTask("repeat_token", cfg.pattern_length, fixed_char="a"),
    "jsonl": _math_task("jsonl", _read_jsonl, local_file=True),
    "parquet": _math_task("parquet", _read_parquet, local_file=True, needs=("pyarrow", "pandas")),
    "hf_dataset": _math_task("hf_dataset", _load_hf_dataset, local_file=False, needs=("datasets",)),
}


def get_task(data_cfg: Any) -> Task:
    """The task named by data_cfg.task (duck-typed DataConfig); ValueError naming data.task if unknown."""
    if data_cfg.task not in TASKS:
        raise ValueError(f"data.task={data_cfg.task!r} is not a known task; known: {', '.join(sorted(TASKS))}")
    return TASKS[data_cfg.task](data_cfg)


_MATH = "rayrl.data.rewards:math_answer_reward"
TASK_REWARDS = {"copy_pattern": "rayrl.data.rewards:copy_pattern_reward",
                "repeat_token": "rayrl.data.rewards:copy_pattern_reward",
                "jsonl": _MATH, "parquet": _MATH, "hf_dataset": _MATH}


def run_reward_specs(data_cfg: Any) -> list[RewardSpec]:
    """The rewards of a run: data.reward_fns / data.reward_fn, else the task's built-in one (each loaded and
    checked: RewardFnError, a ValueError, naming the key). Needs no data, so every scoring process calls it."""
    return reward_specs(data_cfg, TASK_REWARDS[data_cfg.task])
