"""Tasks with verifiable rewards: a dataset of prompt items plus a reward for a response to one item.

Items are plain dicts of strings ({"prompt", "answer", ...}) so they travel through Ray and checkpoints
as-is, and every reward is a function of the item and the response text only.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from rayrl.data.rewards import cyclic_match, math_exact_match


class Task(Protocol):
    name: str

    def build_dataset(self, num_samples: int, seed: int) -> list[dict]: ...

    def reward(self, prompt_item: dict, response_text: str) -> float: ...


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

    def reward(self, prompt_item: dict, response_text: str) -> float:
        return cyclic_match(response_text, prompt_item["pattern"], len(prompt_item["answer"]))


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
class MathTask:
    """Prompt/answer rows from a local jsonl or parquet file or a HF dataset, rewarded by math_exact_match.

    The whole source is used (data.num_samples only sizes generated datasets) in file order; the loader
    shuffles. The answer column may be a bare number or a full solution ending in `#### N`.
    """

    name: str
    path: str
    prompt_key: str
    answer_key: str
    read: Callable[[str], list[dict]]

    def build_dataset(self, num_samples: int, seed: int) -> list[dict]:
        rows = self.read(self.path)
        items = []
        for i, row in enumerate(rows):
            for key, field in ((self.prompt_key, "data.prompt_key"), (self.answer_key, "data.answer_key")):
                if key not in row:
                    raise ValueError(f"data.path={self.path!r} row {i} has no column {field}={key!r}")
            items.append({"prompt": str(row[self.prompt_key]), "answer": str(row[self.answer_key])})
        if not items:
            raise ValueError(f"data.path={self.path!r} holds no rows")
        return items

    def reward(self, prompt_item: dict, response_text: str) -> float:
        return math_exact_match(response_text, prompt_item["answer"])


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
        return MathTask(name, data_cfg.path, data_cfg.prompt_key, data_cfg.answer_key, read)

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
