"""Missing state is an error, not a fallback: a rollout worker whose ``worker_I.pt`` a checkpoint lacks (with
as many workers as were saved) refuses to load; one beyond the saved workers (a resize) needs none (its seeds
do not depend on it). The worker's own code, in-process (no Ray). The actor ranks' side of the rule is in
tests/test_reshard.py."""

from __future__ import annotations

import pytest
import torch

from rayrl.checkpoint.errors import CheckpointInvalid
from rayrl.config import load_config
from rayrl.workers.rollout import RolloutWorker
from tests.support import FAST, REPO


def _worker(index: int) -> RolloutWorker:
    return RolloutWorker(load_config(str(REPO / "configs/grpo_tiny.yaml"), FAST), index)


def test_a_missing_rollout_state_is_an_error_and_an_extra_worker_needs_none(tmp_path):
    saved = _worker(0)
    directory = str(tmp_path / "rollout")
    saved.save_checkpoint(directory)
    assert torch.load(tmp_path / "rollout/worker_0.pt", weights_only=True) == saved.engine.state_dict()
    _worker(0).load_checkpoint(directory, saved_workers=1)
    (tmp_path / "rollout/worker_0.pt").unlink()

    with pytest.raises(CheckpointInvalid, match=r"worker_0\.pt.*rollout worker 0 of the 1 saved"):
        _worker(0).load_checkpoint(directory, saved_workers=1)
    _worker(1).load_checkpoint(directory, saved_workers=1)  # a second worker where one was saved: nothing to load
