"""A worker's CUDA device comes from the GPU ids Ray assigned, not from an assumed device 0."""

from __future__ import annotations

import pytest
import torch

from rayrl.workers.devices import cuda_index, worker_device


@pytest.mark.parametrize("assigned, visible, index", [
    (["3"], "3", 0),  # Ray set CUDA_VISIBLE_DEVICES to the assigned GPU (its default)
    (["3"], "0,1,2,3", 3),  # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES: all visible
    (["5"], "4, 5,6", 1),
    (["2"], None, 2),
    ([], "0,1", 0),  # outside Ray
])
def test_cuda_index_is_the_assigned_gpu(assigned: list[str], visible: str | None, index: int) -> None:
    assert cuda_index(assigned, visible) == index


def test_cpu_workers_and_a_gpu_request_without_cuda() -> None:
    assert worker_device("actor.num_gpus_per_worker", 0.0) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match=r"^rollout.num_gpus_per_worker=0.5, but this process sees no CUDA"):
            worker_device("rollout.num_gpus_per_worker", 0.5)
