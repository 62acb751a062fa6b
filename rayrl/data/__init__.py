"""Tasks with verifiable rewards and resumable prompt loading."""

from __future__ import annotations

from rayrl.data.loader import BatchStream, make_dataloader
from rayrl.data.rewards import cyclic_match, extract_final_number, math_exact_match
from rayrl.data.tasks import TASKS, CyclicPatternTask, MathTask, Task, get_task

__all__ = [
    "TASKS",
    "BatchStream",
    "CyclicPatternTask",
    "MathTask",
    "Task",
    "cyclic_match",
    "extract_final_number",
    "get_task",
    "make_dataloader",
    "math_exact_match",
]
