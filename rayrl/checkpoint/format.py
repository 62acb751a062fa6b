"""The on-disk format of a run's checkpoints: every directory name, file name, state key and manifest field.

Every reader and writer (the layout, the manifest, the workers, the participants, the export, the tests)
spells these names through this module, so the format has one definition (DESIGN.md, "On disk"):

    <run dir>/checkpoints/                  CHECKPOINTS_DIR
      latest_checkpointed_iteration.txt     TRACKER_FILE
      global_step_<N>/                      STEP_PREFIX + N
        actor/                              ACTOR_DIR: DCP files (DCP_METADATA_FILE + one .distcp per rank),
                                            state keys MODEL_KEY and OPTIMIZER_KEY, EXTRA_STATE_FILE per rank
        rollout/worker_<I>.pt               ROLLOUT_DIR, ROLLOUT_STATE_FILE
        data/data.pt                        DATA_DIR, DATA_STATE_FILE
        data/rollouts_ahead.pt              ROLLOUTS_AHEAD_FILE: finished rollouts of later steps
                                            (rollout.async_steps), whose prompts data.pt already handed out
        hf/                                 HF_DIR: the periodic Hugging Face export (export_hf_every)
        trainer_state.json                  TRAINER_STATE_FILE
        manifest.json                       MANIFEST_FILE, written last
      .tmp-*                                TEMP_PREFIX: unfinished writes, never a step
      .storage-check                        STORAGE_MARKER_FILE: the start-up check that every worker sees
                                            this directory (written, read back by every worker, removed)
      run_<k>/                              ARCHIVE_PREFIX: earlier runs (resume_mode=disable)
"""

from __future__ import annotations

CHECKPOINTS_DIR = "checkpoints"  # under the run directory
TRACKER_FILE = "latest_checkpointed_iteration.txt"
STEP_PREFIX = "global_step_"
ARCHIVE_PREFIX = "run_"
TEMP_PREFIX = ".tmp-"
STORAGE_MARKER_FILE = ".storage-check"

# one subdirectory per participant of a step
ACTOR_DIR = "actor"
ROLLOUT_DIR = "rollout"
DATA_DIR = "data"
HF_DIR = "hf"

TRAINER_STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"

# inside ACTOR_DIR: torch.distributed.checkpoint's files, and the per-rank state DCP does not hold
DCP_METADATA_FILE = ".metadata"
DCP_SHARD_SUFFIX = ".distcp"  # DCP's data files: __<rank>_<i>.distcp, the ones rank <rank> wrote
EXTRA_STATE_FILE = "extra_state_rank_{rank}.pt"
MODEL_KEY = "model"  # the DCP state keys
OPTIMIZER_KEY = "optimizer"

ROLLOUT_STATE_FILE = "worker_{index}.pt"  # inside ROLLOUT_DIR
DATA_STATE_FILE = "data.pt"  # inside DATA_DIR
ROLLOUTS_AHEAD_FILE = "rollouts_ahead.pt"  # inside DATA_DIR, only when a step's checkpoint has rollouts ahead

# manifest.json
MANIFEST_VERSION = 1  # the newest format_version this code reads and the one it writes
M_FORMAT_VERSION = "format_version"
M_STEP = "step"
M_CREATED = "created"
M_TOTAL_BYTES = "total_bytes"
M_FILES = "files"  # {relative path: digest}
M_EXTRA = "extra"
D_SIZE = "size"  # a digest's fields
D_CRC32 = "crc32"


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step}"


def extra_state_file(rank: int) -> str:
    return EXTRA_STATE_FILE.format(rank=rank)


def rollout_state_file(index: int) -> str:
    return ROLLOUT_STATE_FILE.format(index=index)
