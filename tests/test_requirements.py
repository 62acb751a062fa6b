"""The torch floor in pyproject.toml is a torch that has what the async checkpoint save imports."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
FLOOR = (2, 9)  # the first torch with DefaultStager, StagingOptions and AsyncSaveResponse


def test_pyproject_torch_floor_is_the_first_with_the_async_save_api() -> None:
    deps = (REPO / "pyproject.toml").read_text()
    floor = re.search(r'"torch>=(\d+)\.(\d+)"', deps)
    assert floor is not None, "pyproject.toml: no torch>=X.Y"
    assert tuple(map(int, floor.groups())) == FLOOR
    assert tuple(int(x) for x in torch.__version__.split(".")[:2]) >= FLOOR


def test_async_save_imports_by_the_path_rayrl_uses() -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict_saver import AsyncSaveResponse
    from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

    options = StagingOptions(use_pinned_memory=False, use_shared_memory=False, use_async_staging=True,
                             use_non_blocking_copy=False)
    DefaultStager(options).close()
    assert {"async_stager", "process_group", "storage_writer"} <= set(inspect.signature(dcp.async_save).parameters)
    assert {"staging_completion", "upload_completion"} <= set(inspect.signature(AsyncSaveResponse).parameters)
