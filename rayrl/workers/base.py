"""What every worker process shares: thread settings, logging, liveness, preemption notices."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import torch

from rayrl.workers.devices import use_deterministic_kernels, worker_device

# TEST-ONLY fault hook (tests/test_recovery_*.py): a rollout worker hangs in these steps (comma-separated),
# each once per run.
TEST_HANG_ENV = "RAYRL_TEST_HANG_AT_STEP"


class WorkerBase:
    """Base of the Ray actor classes; plain Python so it also runs without Ray in unit tests."""

    def __init__(self, cfg: Any, role: str, index: int) -> None:
        self.cfg, self.role, self.index = cfg, role, index
        # One intra-op thread per worker: the workers share the node's cores, and a fixed thread count keeps
        # CPU reductions in the same order run after run (bit-exact resume depends on it).
        torch.set_num_threads(int(os.environ.get("RAYRL_WORKER_THREADS", "1")))
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        self.preemption_notice = False
        if cfg.runner.deterministic:
            use_deterministic_kernels()  # before the first CUDA call
        self.device = worker_device(f"{role}.num_gpus_per_worker", getattr(cfg, role).num_gpus_per_worker)
        try:
            signal.signal(signal.SIGTERM, self._on_sigterm)  # replaces Ray's handler, which would exit
        except ValueError:  # not the main thread (threaded actors): no notice handling
            pass

    def _on_sigterm(self, signum, frame) -> None:  # noqa: ARG002
        """A preemption notice: remember it; the coordinator saves at the next step boundary."""
        self.preemption_notice = True

    def ping(self) -> dict[str, Any]:
        """Liveness probe plus what the coordinator needs to act on a notice and to say where a failure was."""
        import ray

        return {"role": self.role, "index": self.index, "pid": os.getpid(),
                "node": ray.get_runtime_context().get_node_id(), "preemption_notice": self.preemption_notice}

    def rendezvous_address(self, bind_localhost: bool) -> tuple[str, int]:
        """An address and a free port on this node for the group's store (127.0.0.1 on a single node)."""
        import ray

        host = "127.0.0.1" if bind_localhost else ray.util.get_node_ip_address()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            return host, s.getsockname()[1]

    def test_fault_hook(self, step: int) -> None:
        """TEST-ONLY: with RAYRL_TEST_HANG_AT_STEP=N[,M...] in the environment, hang forever in step N (and M...),
        once per run directory (a marker file), so that a test can show runner.step_timeout_s catching a hang or
        kill a run at a known step."""
        if str(step) not in os.environ.get(TEST_HANG_ENV, "").split(","):
            return
        try:
            (Path(self.cfg.runner.log_path) / f".test-hang-{step}").open("x").close()
        except FileExistsError:
            return
        while True:
            time.sleep(3600)
