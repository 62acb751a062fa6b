"""One rank's side of a torch.distributed.checkpoint (DCP) save or load, synchronous or asynchronous.

The caller hands in a plain state dict (``{"model": ..., "optimizer": ...}``); this module knows nothing of
what is inside. Asynchronous saves stage the state into host memory with one ``DefaultStager`` kept for the
whole run (re-created stagers leak host memory; its buffers are the one extra copy of the state) and write
in a background thread on a gloo group of their own (an async save on the training group crashes gloo when
training collectives run beside it). Staging itself runs in the background too: ``save`` returns at once
and the caller must call ``wait_staged`` before it changes the state (the next optimizer step), so the
copy overlaps whatever comes between (the next step's generation on the rollout workers). All of this runs
in threads at the lowest CPU priority, so that on a busy node it takes the cycles training leaves idle.
The digests of the written files (for the manifest) are computed as they are written, and a load checks
them as it reads the files (``rayrl.checkpoint.dcp_io``): neither reads a shard twice.

DCP writes every tensor with ``torch.save``, which by default computes a CRC32 of each zip record: that
doubled the CPU time of writing a shard (README, "Measurements behind design choices"), and the manifest's
CRC32 of every file already covers those bytes. So the process that owns a ``ShardedCheckpointIO`` turns torch's
record CRC off (``torch.serialization.set_crc32_options``; ``torch.load`` reads such files as usual).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import shutil
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict_saver import AsyncSaveResponse
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

from rayrl.checkpoint.dcp_io import VerifyingReader, dcp_reader, dcp_writer
from rayrl.checkpoint.errors import CheckpointError, CheckpointInvalid
from rayrl.checkpoint.manifest import Digest, file_digest, is_dcp_data, part_digests, same_digest
from rayrl.checkpoint.storage import Storage, is_url, storage_for

log = logging.getLogger(__name__)


class ShardedCheckpointIO:
    """Saves and loads this rank's shards, on local disk or an fsspec filesystem (``storage_options`` for
    the latter); at most one save in flight (a new save waits for the last)."""

    def __init__(self, rank: int, async_group: dist.ProcessGroup | None, thread_count: int = 1,
                 storage_options: dict[str, Any] | None = None) -> None:
        torch.serialization.set_crc32_options(False)  # see the module docstring: the manifest has the CRC
        self.storage_options = storage_options
        self.rank = rank
        self.async_group = async_group
        self.thread_count = thread_count
        self._stager: DefaultStager | None = None
        self._finisher: ThreadPoolExecutor | None = None
        self._pending: Future[dict[str, Digest]] | None = None
        self._staged: Future[None] | None = None

    def save(self, directory: str, state_dict: dict[str, Any], async_save: bool) -> None:
        """Write this rank's shards into ``directory``; with ``async_save`` return at once, staging (one
        host copy, reused by every later save), writing and hashing in the background: the caller must
        ``wait_staged`` before changing ``state_dict``'s tensors."""
        self.wait()
        writer = dcp_writer(storage_for(directory, self.storage_options), directory, self.thread_count)
        if not async_save:
            with _plain_errors(directory, "write"):
                dcp.save(state_dict, storage_writer=writer)
            self._pending = Future()
            self._pending.set_result(writer.digests)
            return
        cuda_devices = {t.device for t in _leaves(state_dict) if isinstance(t, torch.Tensor) and t.is_cuda}
        for device in cuda_devices:
            # DCP's stager copies on a stream of its own and synchronises only that one: the kernels that
            # last wrote these tensors (the optimizer step) must have finished on the compute stream first.
            torch.cuda.current_stream(device).synchronize()
        if self._stager is None:
            on_gpu = bool(cuda_devices)
            self._stager = DefaultStager(StagingOptions(
                use_pinned_memory=on_gpu, use_shared_memory=False,
                use_async_staging=True, use_non_blocking_copy=on_gpu))
            self._finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rayrl-ckpt",
                                                initializer=_lowest_cpu_priority)
        staged: Future[None] = Future()
        self._staged = staged
        self._pending = self._finisher.submit(self._save_in_background, directory, state_dict, writer, staged)

    def _save_in_background(self, directory: str, state_dict: dict[str, Any], writer: Any,
                            staged: Future[None]) -> dict[str, Digest]:
        """Runs in the low-priority thread: DCP's staging and upload threads start from here and inherit
        its priority, so staging, writing and hashing use the cores training leaves idle."""
        with _plain_errors(directory, "write"):
            try:
                response = dcp.async_save(state_dict, storage_writer=writer,
                                          process_group=self.async_group, async_stager=self._stager)
            except BaseException:
                staged.set_result(None)  # nothing is copying the state any more
                raise
            assert isinstance(response, AsyncSaveResponse)  # async staging
            response.staging_completion.add_done_callback(lambda _: staged.set_result(None))
            response.upload_completion.result()
        return writer.digests

    def wait_staged(self) -> float:
        """Block until the save in flight has copied the state out (then it may change); the seconds
        waited. A staging error is raised by ``wait`` (the upload fails with it), not here."""
        staged, self._staged = self._staged, None
        if staged is None or staged.done():
            return 0.0
        t0 = time.perf_counter()
        concurrent.futures.wait([staged])
        return time.perf_counter() - t0

    def done(self) -> bool:
        """True when no save is in flight or the one in flight has finished (successfully or not)."""
        return self._pending is None or self._pending.done()

    def wait(self) -> dict[str, Digest] | None:
        """Block until the last save is on disk; the digests of its files (relative names), or None when
        there was nothing to wait for (each result is handed out once). Re-raises a background error."""
        if self._pending is None:
            return None
        pending, self._pending = self._pending, None
        self._staged = None  # the upload waited for the staging
        return pending.result()

    def abandon(self) -> None:
        """Let the save in flight finish and forget it, its error included: the manager dropped that save
        (and removes its directory) and this rank's state is about to be reloaded."""
        try:
            self.wait()
        except Exception as err:  # noqa: BLE001 -- nothing depends on this save any more
            log.info("dropped the aborted save in flight: %s", err)

    def load(self, directory: str, state_dict: dict[str, Any], verify: bool = True) -> None:
        """Load in place into ``state_dict``'s tensors, resharding to their current layout. With ``verify``
        and ``directory`` part of a committed step, every DCP file is checked against the step's manifest:
        those this rank reads whole as it reads them, and of the rest the ones this rank is assigned (file i
        goes to rank i mod world size), so that each file is checked by one rank at least. A damaged file
        raises ``CheckpointInvalid``."""
        storage = storage_for(directory, self.storage_options)
        expected = part_digests(directory, storage) if verify else None
        if expected is None:
            with _plain_errors(directory, "read"):
                dcp.load(state_dict, storage_reader=dcp_reader(storage, directory))
            return
        part = storage.join(os.path.abspath(directory) if storage.commits_by_rename else directory)
        directory, step_dir, prefix = str(part), str(storage.parent(part)), storage.name(part) + "/"
        data = sorted(n for n in expected if is_dcp_data(n))
        reader = VerifyingReader(directory, expected, step_dir, prefix, storage)
        try:
            with _plain_errors(directory, "read"):
                dcp.load(state_dict, storage_reader=reader)
        except CheckpointInvalid:
            raise
        except CheckpointError:  # a damaged file can fail torch.load before its checksum: name the damage
            _check_files(storage, directory, expected, data, step_dir, prefix)
            raise
        world = dist.get_world_size() if dist.is_initialized() else 1
        mine = {n for i, n in enumerate(data) if i % world == self.rank}
        _check_files(storage, directory, expected, [n for n in reader.unchecked() if n in mine], step_dir, prefix)

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._stager is not None:
                self._stager.close()
                self._stager = None
            if self._finisher is not None:
                self._finisher.shutdown(wait=False)
                self._finisher = None


@contextlib.contextmanager
def _plain_errors(directory: str, what: str) -> Iterator[None]:
    """DCP's CheckpointException is a BaseException carrying every rank's traceback: as such it escapes
    ``except Exception`` (Ray's included) and reads badly. Re-raise it as a one-line CheckpointError."""
    try:
        yield
    except CheckpointException as err:
        invalid = [exc for exc, _ in err.failures.values() if isinstance(exc, CheckpointInvalid)]
        if invalid:  # a damaged file, found by the rank that read it: the step is not usable
            raise invalid[0] from None
        causes = "; ".join(f"rank {rank}: {type(exc).__name__}: {exc}" for rank, (exc, _) in err.failures.items())
        note = _full_disk_note(directory)  # first: long messages get shortened at the end
        raise CheckpointError(directory, f"DCP {what} failed{note} ({causes})") from None


FULL_DISK_BYTES = 16 << 20  # less free space than this after a failed write: name the full disk


def _full_disk_note(directory: str) -> str:
    """torch's zip writer (DCP's items go through it) reports a full disk as "unexpected pos N", without the
    OS error, and another rank's ENOSPC may come later in a message that gets shortened: when the filesystem
    is (nearly) full, say so up front."""
    if is_url(directory):
        return ""  # a remote store: its own error says what went wrong
    path = directory
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return ""
    return "" if free >= FULL_DISK_BYTES else f": No space left on device ({free} bytes free)"


def _check_files(storage: Storage, directory: str, expected: dict[str, Digest], names: list[str], step_dir: str,
                 prefix: str) -> None:
    for name in names:
        if not same_digest(file_digest(storage.join(directory, name), storage), expected[name]):
            raise CheckpointInvalid(step_dir, f"checksum mismatch for {prefix}{name}")


def _lowest_cpu_priority() -> None:
    """Nice this thread (Linux schedules threads one by one) to the lowest priority: a background save
    then takes mostly CPU time that training leaves idle (generation keeps one worker busy at a time).
    Ray starts its workers at nice 15, so this is a small step down; the idle class (SCHED_IDLE) goes
    further but measured worse (README, "Measurements behind design choices"), likely because a starved thread holding the GIL or the process's memory-map lock stalls the training thread
    that waits for it. Elsewhere setpriority would nice the whole process, so it is left alone there."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _leaves(obj: Any):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _leaves(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _leaves(v)
    else:
        yield obj
