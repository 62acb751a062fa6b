"""The policy's weights as a Hugging Face safetensors checkpoint, written by every rank in parallel.

torch.distributed.checkpoint's ``HuggingFaceStorageWriter`` (what torchtitan uses) has each rank write the
shards it holds into a ``sharded/`` subdirectory; rank 0 then consolidates them into full tensors
(``model-00001-of-00001.safetensors`` plus ``model.safetensors.index.json``, the layout ``from_pretrained``
reads) before the collective returns on every rank, and the shards are removed. No rank ever holds the
full model in memory for this.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Collection

import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import HuggingFaceStorageWriter
from torch.distributed.checkpoint.api import CheckpointException

from rayrl.checkpoint.errors import CheckpointError


def save_hf_weights(state_dict: dict[str, Any], directory: str, rank: int, tied: Collection[str] = ()) -> None:
    """A collective of the default process group: write ``state_dict`` (this rank's DTensor shards, keyed by
    HF names) into ``directory`` as consolidated safetensors. ``tied``: second names of a tensor (tied
    embeddings), left out as ``save_pretrained`` does (safetensors refuses shared memory; loading re-ties)."""
    os.makedirs(directory, exist_ok=True)
    unique = {k: v for k, v in state_dict.items() if k not in tied}
    writer = HuggingFaceStorageWriter(directory, save_distributed=True, enable_consolidation=True)
    try:
        dcp.save(unique, storage_writer=writer)
    except CheckpointException as err:  # a BaseException carrying every rank's traceback
        causes = "; ".join(f"rank {r}: {type(e).__name__}: {e}" for r, (e, _) in err.failures.items())
        raise CheckpointError(directory, f"Hugging Face export failed ({causes})") from None
    if rank == 0:  # consolidation is done (rank 0 ran it before the collective returned): the shards go
        shutil.rmtree(str(writer.path))
