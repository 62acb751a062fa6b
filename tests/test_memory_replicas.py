"""The pure parts of the in-memory checkpoint copy: a rank's state copied out and put back exactly, and which
rank holds each rank's second copy (the end-to-end recovery from memory is in test_recovery_workers.py)."""

from __future__ import annotations

import pytest
import torch

from rayrl.checkpoint.memory import copy_nbytes, local_copy, restore_local
from rayrl.replicas import peer_ranks


def test_a_copy_is_independent_of_the_state_and_restores_it_exactly() -> None:
    state = {"model": {"w": torch.randn(4, 3)},
             "optimizer": {"state": {"w": {"exp_avg": torch.randn(4, 3), "step": torch.tensor(3.0)}},
                           "param_groups": [{"lr": 0.1, "params": ["w"]}]}}
    before = {"w": state["model"]["w"].clone(), "exp_avg": state["optimizer"]["state"]["w"]["exp_avg"].clone()}
    saved = local_copy(state)
    w = state["model"]["w"]
    w.add_(1.0)  # training goes on after the copy
    state["optimizer"]["state"]["w"]["exp_avg"].mul_(2.0)
    state["optimizer"]["param_groups"][0]["lr"] = 0.5
    restored = restore_local(state, saved)
    assert restored["model"]["w"] is w and torch.equal(w, before["w"])  # in place: the model's own tensor
    assert torch.equal(restored["optimizer"]["state"]["w"]["exp_avg"], before["exp_avg"])
    assert restored["optimizer"]["param_groups"][0]["lr"] == 0.1
    assert copy_nbytes(saved) == (12 + 12 + 1) * 4


def test_a_copy_of_another_shape_is_refused_naming_the_entry() -> None:
    saved = local_copy({"model": {"w": torch.zeros(2, 3)}})
    with pytest.raises(ValueError, match=r"state\.model\.w: the memory copy holds \(2, 3\)"):
        restore_local({"model": {"w": torch.zeros(4, 3)}}, saved)


@pytest.mark.parametrize(("nodes", "peers"), [
    (["a"], [None]),
    (["a", "a"], [1, 0]),  # one node: the next rank (a process loss still leaves a copy)
    (["a", "b"], [1, 0]),
    (["a", "a", "b", "b"], [2, 3, 0, 1]),  # one shift for all: each rank holds one peer's copy
    (["a", "b", "a", "b"], [1, 2, 3, 0]),
    (["a", "a", "a", "b"], [3, 3, 3, 0]),  # no shift fits every rank: the next rank on another node
])
def test_each_rank_s_second_copy_goes_to_a_rank_on_another_node(nodes, peers) -> None:
    assert peer_ranks(nodes) == peers
