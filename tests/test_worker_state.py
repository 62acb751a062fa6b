"""Missing state is an error, not a fallback: a rollout worker whose ``worker_I.pt`` a checkpoint lacks (with
as many workers as were saved) refuses to load; one beyond the saved workers (a resize) seeds its sampling
from the documented rule, ``derived_seed(seed, role, index, step)``. The worker's own code, in-process (no Ray).
The actor ranks' side of the same rule is in tests/test_reshard.py."""

from __future__ import annotations

import pytest
import torch

from rayrl.checkpoint.errors import CheckpointInvalid
from rayrl.checkpoint.rng import derived_seed
from rayrl.config import load_config
from rayrl.workers.rollout import RolloutWorker
from tests.support import FAST, REPO


def _worker(index: int) -> RolloutWorker:
    return RolloutWorker(load_config(str(REPO / "configs/grpo_tiny.yaml"), FAST), index)


def test_a_missing_rollout_state_is_an_error_and_an_extra_worker_follows_the_seed_rule(tmp_path):
    saved = _worker(0)
    saved.engine.generate(["ab"], 2, 1)  # the generator moves on from its seed
    directory = str(tmp_path / "rollout")
    saved.save_checkpoint(directory)
    (tmp_path / "rollout/worker_0.pt").unlink()

    with pytest.raises(CheckpointInvalid, match=r"worker_0\.pt.*rollout worker 0 of the 1 saved"):
        _worker(0).load_checkpoint(directory, saved_workers=1, step=7)

    extra = _worker(1)  # a second worker where one was saved: no state of its own
    extra.load_checkpoint(directory, saved_workers=1, step=7)
    want = torch.Generator().manual_seed(derived_seed(1, "rollout", 1, 7)).get_state()
    assert torch.equal(extra.engine.state_dict()["rng"], want)
    assert derived_seed(1, "rollout", 1, 7) != derived_seed(1, "rollout", 1, 8) != derived_seed(1, "actor", 1, 8)
