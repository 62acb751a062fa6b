"""The sample ledger: which prompts each step trained on, and the audit that proves none was skipped or used
twice across any number of resumes, recoveries and resizes.

Every metrics.jsonl line carries ``"ledger": {"epoch": E, "indices": [...]}``: the dataset positions of the
prompts that step trained on, in the order the data loader drew them. Within an epoch the loader draws each
position at most once; an epoch ends after ``dataset_size // batch_size`` batches (the remainder is dropped,
by design: drop_last), so a run that used every prompt exactly once shows, per epoch, disjoint batches, and
every epoch before the last one has all its batches.
"""

from __future__ import annotations

from typing import Any

LEDGER_KEY = "ledger"


def entry(epoch: int, indices: list[int]) -> dict[str, Any]:
    """The ledger field of one step's metrics line."""
    return {"epoch": int(epoch), "indices": [int(i) for i in indices]}


def audit(lines: list[dict[str, Any]], dataset_size: int, batch_size: int) -> list[str]:
    """The problems in a run's metrics lines (empty: every step once, every prompt at most once per epoch,
    no epoch left before its last batch)."""
    problems: list[str] = []
    steps = [line["step"] for line in lines]
    if steps != list(range(1, len(steps) + 1)):
        problems.append(f"steps are not 1..{len(steps)} once each, in order: {steps}")
    batches_per_epoch = dataset_size // batch_size
    used: dict[int, dict[int, int]] = {}  # epoch -> position -> the step that used it
    batches: dict[int, int] = {}
    for line in lines:
        if LEDGER_KEY not in line:
            problems.append(f"step {line['step']}: no ledger")
            continue
        epoch, indices = line[LEDGER_KEY]["epoch"], line[LEDGER_KEY]["indices"]
        if len(indices) != batch_size:
            problems.append(f"step {line['step']}: {len(indices)} prompts, not data.batch_size={batch_size}")
        batches[epoch] = batches.get(epoch, 0) + 1
        seen = used.setdefault(epoch, {})
        for index in indices:
            if not 0 <= index < dataset_size:
                problems.append(f"step {line['step']}: prompt {index} is outside the dataset (size {dataset_size})")
            elif index in seen:
                problems.append(f"step {line['step']}: prompt {index} of epoch {epoch} already used at step "
                                f"{seen[index]}")
            else:
                seen[index] = line["step"]
    epochs = sorted(batches)
    if epochs and epochs != list(range(epochs[-1] + 1)):
        problems.append(f"epochs skipped: {epochs}")
    for epoch in epochs[:-1]:
        if batches[epoch] != batches_per_epoch:
            problems.append(f"epoch {epoch} ended after {batches[epoch]} batches, not {batches_per_epoch}")
    if epochs and batches[epochs[-1]] > batches_per_epoch:
        problems.append(f"epoch {epochs[-1]} has {batches[epochs[-1]]} batches, more than {batches_per_epoch}")
    return problems
