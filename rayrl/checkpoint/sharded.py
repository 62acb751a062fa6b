"""One rank's side of a torch.distributed.checkpoint (DCP) save or load, synchronous or asynchronous.

The caller hands in a plain state dict (``{"model": ..., "optimizer": ...}``); this module knows nothing of
what is inside. Asynchronous saves stage the state into host memory with one ``DefaultStager`` kept for the
whole run (re-created stagers leak host memory) and write in a background thread on a gloo group of their
own (an async save on the training group crashes gloo when training collectives run beside it).
"""

from __future__ import annotations

import glob
import logging
import os
from concurrent.futures import Future
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

log = logging.getLogger(__name__)

METADATA_FILE = ".metadata"


class ShardedCheckpointIO:
    """Saves and loads this rank's shards; at most one asynchronous save in flight."""

    def __init__(self, rank: int, async_group: dist.ProcessGroup | None, thread_count: int = 1) -> None:
        self.rank = rank
        self.async_group = async_group
        self.thread_count = thread_count
        self._stager: DefaultStager | None = None
        self._pending: Future | None = None
        self._pending_dir: str | None = None

    def save(self, directory: str, state_dict: dict[str, Any], async_save: bool) -> None:
        """Write this rank's shards into ``directory``; with ``async_save`` return once staged."""
        self.wait()
        writer = FileSystemWriter(directory, single_file_per_rank=True, sync_files=True,
                                  thread_count=self.thread_count)
        if not async_save:
            dcp.save(state_dict, storage_writer=writer)
            return
        if self._stager is None:
            on_gpu = torch.cuda.is_available() and any(
                isinstance(t, torch.Tensor) and t.is_cuda for t in _leaves(state_dict))
            self._stager = DefaultStager(StagingOptions(
                use_pinned_memory=on_gpu, use_shared_memory=False,
                use_async_staging=False, use_non_blocking_copy=on_gpu))
        self._pending = dcp.async_save(state_dict, storage_writer=writer,
                                       process_group=self.async_group, async_stager=self._stager)
        self._pending_dir = directory

    def in_flight(self) -> bool:
        return self._pending is not None

    def done(self) -> bool:
        """True when no save is in flight or the one in flight has finished (successfully or not)."""
        return self._pending is None or self._pending.done()

    def wait(self) -> None:
        """Block until the save in flight is on disk; re-raise its error."""
        if self._pending is None:
            return
        pending, self._pending = self._pending, None
        pending.result()

    def written_files(self, directory: str) -> list[str]:
        """Paths (relative to ``directory``) of the files this rank's DCP save wrote."""
        names = [os.path.basename(p) for p in glob.glob(os.path.join(directory, f"__{self.rank}_*.distcp"))]
        if self.rank == 0:
            names.append(METADATA_FILE)
        return sorted(names)

    def load(self, directory: str, state_dict: dict[str, Any]) -> None:
        """Load in place into ``state_dict``'s tensors, resharding to their current layout."""
        dcp.load(state_dict, storage_reader=FileSystemReader(directory))

    def close(self) -> None:
        self.wait()
        if self._stager is not None:
            self._stager.close()
            self._stager = None


def _leaves(obj: Any):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _leaves(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _leaves(v)
    else:
        yield obj
