"""The device a worker process computes on (CPU, or the CUDA device Ray assigned to it), and its kernels.

Ray normally sets CUDA_VISIBLE_DEVICES to the GPUs it assigned, so the first visible device is the
worker's; with RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES (or a launcher that sets the variable itself) it
does not, and device 0 would be some other worker's GPU. So the index comes from Ray's assigned ids.
"""

from __future__ import annotations

import os

import torch


def cuda_index(assigned: list[str], visible: str | None) -> int:
    """The torch index of the first assigned GPU: its position in CUDA_VISIBLE_DEVICES when that lists it,
    else the id itself (all devices visible); 0 when nothing was assigned (a process outside Ray)."""
    if not assigned:
        return 0
    gpu = str(assigned[0]).strip()
    listed = [v.strip() for v in visible.split(",")] if visible else []
    return listed.index(gpu) if gpu in listed else int(gpu)


def _assigned_gpu_ids() -> list[str]:
    """The GPU ids Ray assigned to this worker ([] outside a Ray worker, or where Ray is not installed)."""
    try:
        import ray
    except ImportError:
        return []
    return [str(i) for i in ray.get_gpu_ids()] if ray.is_initialized() else []


def worker_device(num_gpus_key: str, num_gpus: float) -> torch.device:
    """CPU when the worker asks for no GPU; else its assigned CUDA device, made the current one."""
    if num_gpus <= 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"{num_gpus_key}={num_gpus:g}, but this process sees no CUDA device")
    index = cuda_index(_assigned_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"))
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def use_deterministic_kernels() -> None:
    """``runner.deterministic``: deterministic torch kernels (an error where an op has none), cuBLAS with a
    fixed workspace (set before the first cuBLAS call), and vLLM's batch-invariant kernels (read when vLLM is
    imported, after this). On CPU rayrl is bit-exact without any of this."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    os.environ["VLLM_BATCH_INVARIANT"] = "1"
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
