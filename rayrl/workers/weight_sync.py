"""How the actor's new weights reach the rollout engines of split placement: two paths, one per engine.

- ``ipc`` (an engine on the node of actor rank 0): rank 0 keeps the gathered full weights in memory that the
  engine's process can map (on a GPU: the CUDA memory they were gathered into, exported as CUDA IPC handles;
  on CPU: anonymous shared-memory files, memfd, that the engine opens through /proc/<pid>/fd) and sends the engines only handles, through Ray.
  Each engine opens them, copies the weights into its model and lets go; rank 0 frees the memory once every
  engine has answered. Nothing of the weights passes through Ray's object store or the host (on a GPU).
- ``object_store`` (the fallback, and the only path across nodes): the full weights as host tensors through
  Ray's object store.

``choose_paths`` picks each engine's path once per fleet start, from where the processes run and what they
see; the rest is the two halves of the ipc path: ``export_handles`` in rank 0, ``open_handles`` in the engine.
No Ray here: the GPU smoke suite drives both halves in two plain processes.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.multiprocessing.reductions import rebuild_cuda_tensor, reduce_tensor

IPC, OBJECT_STORE = "ipc", "object_store"
# What rank 0 sends each ipc engine: the shared host buffers (pid, fd, dtype, elements), and per tensor (name, "cpu",
# (buffer index, dtype, shape, element offset)) or (name, "cuda", (GPU UUID, rebuild_cuda_tensor's arguments))
Handles = dict[str, list]
SHM_DIR = "/dev/shm"  # its free room stands in for the node's free shared memory (memfds, Ray's object store)
SHM_MARGIN = 2  # the ipc path on CPU wants this many copies of the weights free there (Ray's store shares it)
_CUDA_DEVICE_ARG = 6  # the position of the exporting process's device index in rebuild_cuda_tensor's arguments


def device_info(device: torch.device) -> dict[str, Any]:
    """What the path choice needs to know of a worker's device: its type, the UUID of its GPU, and the UUIDs
    of every GPU the process can see (Ray normally shows a worker only the GPUs it assigned to it)."""
    if device.type != "cuda":
        return {"device": device.type, "gpu": None, "visible_gpus": []}
    visible = [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]
    return {"device": "cuda", "gpu": visible[device.index], "visible_gpus": visible}


def choose_paths(source: dict[str, Any], engines: list[dict[str, Any]], backend: str,
                 tensor_parallel_size: int) -> list[tuple[str, str]]:
    """Each engine's path and why. ``source``: actor rank 0, ``engines``: the rollout workers, each a
    ``device_info`` dict plus its ``node`` id, the source on CPU also its ``shared_memory_room``. ipc needs
    the same node; that the engine loads in its own process (vLLM with tensor parallelism hands the weights
    on to worker processes of its own); on a GPU that the engine's process sees rank 0's GPU (it maps that
    GPU's memory); on CPU room for the weights in /dev/shm (a container's default 64 MB often is not: copying
    into a full tmpfs would kill rank 0 with SIGBUS)."""
    paths = []
    for engine in engines:
        if engine["node"] != source["node"]:
            paths.append((OBJECT_STORE, "on another node than actor rank 0"))
        elif backend == "vllm" and tensor_parallel_size > 1:
            paths.append((OBJECT_STORE, "vLLM with rollout.tensor_parallel_size > 1 loads in its own workers"))
        elif source["device"] == "cuda" and source["gpu"] not in engine["visible_gpus"]:
            paths.append((OBJECT_STORE, "same node, but actor rank 0's GPU is not visible to the engine's process"))
        elif source["device"] == "cuda":
            paths.append((IPC, "same node: CUDA IPC handles to actor rank 0's GPU memory"))
        elif source["shm_free"] < SHM_MARGIN * source["weights_bytes"]:
            paths.append((OBJECT_STORE, f"same node, but {SHM_DIR} has {source['shm_free'] / 2**20:.0f} MB free for "
                                        f"{source['weights_bytes'] / 2**20:.0f} MB of weights"))
        else:
            paths.append((IPC, "same node: handles to host shared memory"))
    return paths


def shared_memory_room(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """The bytes of the full tensors of ``state`` (sharded ones count whole) and the free bytes of /dev/shm."""
    import shutil

    return {"weights_bytes": sum(t.numel() * t.element_size() for t in state.values()),
            "shm_free": shutil.disk_usage(SHM_DIR).free}


def paths_event(paths: list[tuple[str, str]]) -> tuple[str, dict[str, Any]]:
    """The ``weight_sync`` event of a fleet start: its console line and its fields (one entry per engine)."""
    line = "; ".join(f"engine {i}: {path} ({why})" for i, (path, why) in enumerate(paths))
    return f"weight sync: {line}", {"paths": [p for p, _ in paths], "reasons": [why for _, why in paths]}


class SharedWeights:
    """Rank 0's full weights while the ipc engines map them: the tensors, and the memory files the host ones
    live in. ``close`` lets go of both; the memory is freed once the engines have dropped their mappings too."""

    def __init__(self, tensors: dict[str, torch.Tensor], fds: list[int]) -> None:
        self.tensors, self.fds = tensors, fds

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.tensors, self.fds = {}, []


def export_handles(state_dict: dict[str, torch.Tensor], receivers: int) -> tuple[Handles, SharedWeights]:
    """Handles to the tensors of ``state_dict`` that ``receivers`` processes of this node can open, and what
    they point to, which the caller keeps until every receiver has answered. CUDA tensors are exported where
    they are (one handle each); host tensors are first copied into one shared-memory file per dtype (a file
    and a mapping per tensor would cost more than the copy, for the many small tensors of a model).

    The host files are memfds (no name in any filesystem, no helper process): a receiver opens one through
    /proc/<pid>/fd/<fd> of this process, and the memory goes when the last mapping and descriptor do, so a
    crash leaves nothing behind. torch's own file_system sharing is not used: it starts torch_shm_manager, a
    child that inherits this process's descriptors, the process group's sockets among them, and keeps them
    open after this process dies, so the other ranks never see the loss and hang in their collectives."""
    tensors: list[tuple[str, str, tuple]] = []
    kept: dict[str, torch.Tensor] = {}
    host = {name: t for name, t in state_dict.items() if not t.is_cuda}
    buffers, fds, views = _pack_into_shared_memory(host)
    for name, tensor in state_dict.items():
        if tensor.is_cuda:
            _, args = reduce_tensor(tensor)  # rebuild_cuda_tensor's; torch counts the receivers' references itself
            tensors.append((name, "cuda", (str(torch.cuda.get_device_properties(tensor.device).uuid), args)))
            kept[name] = tensor
        else:
            index, offset, view = views[name]
            tensors.append((name, "cpu", (index, view.dtype, tuple(view.shape), offset)))
            kept[name] = view
    buffer_args = [(os.getpid(), fd, buffer.dtype, buffer.numel()) for buffer, fd in zip(buffers, fds)]
    return {"buffers": buffer_args, "tensors": tensors}, SharedWeights(kept, fds)


def _pack_into_shared_memory(host: dict[str, torch.Tensor]
                             ) -> tuple[list[torch.Tensor], list[int], dict[str, tuple[int, int, torch.Tensor]]]:
    """Copy ``host`` into one flat shared-memory file (a memfd) per dtype; the buffers, their descriptors, and
    per name the buffer's index, the element offset in it and the view there."""
    dtypes = list(dict.fromkeys(t.dtype for t in host.values()))
    buffers, fds = [], []
    for dtype in dtypes:
        numel = max(1, sum(t.numel() for t in host.values() if t.dtype == dtype))
        fd = os.memfd_create(f"rayrl-weights-{str(dtype).removeprefix('torch.')}")
        try:
            os.ftruncate(fd, numel * torch.empty(0, dtype=dtype).element_size())
            buffers.append(torch.from_file(f"/proc/self/fd/{fd}", shared=True, size=numel, dtype=dtype))
        except BaseException:
            os.close(fd)
            for other in fds:
                os.close(other)
            raise
        fds.append(fd)
    views, filled = {}, [0] * len(dtypes)
    for name, tensor in host.items():
        index = dtypes.index(tensor.dtype)
        offset = filled[index]
        view = buffers[index][offset:offset + tensor.numel()].view(tensor.shape)
        views[name] = (index, offset, view.copy_(tensor))
        filled[index] += tensor.numel()
    return buffers, fds, views


def open_handles(handles: Handles) -> dict[str, torch.Tensor]:
    """The tensors behind ``export_handles``' handles, mapped into this process (nothing is copied): CUDA
    ones on this process's index of the exporting GPU. Drop them once loaded, so the exporter can free them."""
    storages = [torch.from_file(f"/proc/{pid}/fd/{fd}", shared=True, size=numel, dtype=dtype).untyped_storage()
                for pid, fd, dtype, numel in handles["buffers"]]
    out: dict[str, torch.Tensor] = {}
    local_index: dict[str, int] = {}
    for name, kind, payload in handles["tensors"]:
        if kind == "cuda":
            uuid, args = payload
            if uuid not in local_index:
                local_index[uuid] = _visible_index(uuid)
            args = list(args)
            args[_CUDA_DEVICE_ARG] = local_index[uuid]
            out[name] = rebuild_cuda_tensor(*args)
        else:
            index, dtype, shape, offset = payload
            out[name] = torch.empty(0, dtype=dtype).set_(storages[index], offset, shape)
    return out


def _visible_index(uuid: str) -> int:
    for i in range(torch.cuda.device_count()):
        if str(torch.cuda.get_device_properties(i).uuid) == uuid:
            return i
    raise RuntimeError(f"weight sync: GPU {uuid} of actor rank 0 is not visible to this process "
                       "(the path choice should have sent these weights through the object store)")
