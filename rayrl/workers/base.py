"""What every worker process shares: thread settings, logging, liveness, preemption notices."""

from __future__ import annotations

import logging
import os
import signal
import socket
from typing import Any

import torch

from rayrl.workers.devices import use_deterministic_kernels, worker_device
from rayrl.workers.weight_sync import device_info


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
        self.device_info = device_info(self.device)  # for the weight-sync path choice (rayrl.workers.weight_sync)
        try:
            signal.signal(signal.SIGTERM, self._on_sigterm)  # replaces Ray's handler, which would exit
        except ValueError:  # not the main thread (threaded actors): no notice handling
            pass

    def _on_sigterm(self, signum, frame) -> None:  # noqa: ARG002
        """A preemption notice: remember it; the coordinator saves at the next step boundary."""
        self.preemption_notice = True

    def ping(self) -> dict[str, Any]:
        """Liveness probe plus what the coordinator needs to act on a notice, to say where a failure was and
        to choose each engine's weight-sync path."""
        import ray

        return {"role": self.role, "index": self.index, "pid": os.getpid(),
                "node": ray.get_runtime_context().get_node_id(), "preemption_notice": self.preemption_notice,
                "device": self.device_info}

    def warm(self) -> dict[str, Any]:
        """What a standby does ahead of taking a place (rayrl.workers.standby): by default nothing more than
        its constructor did. Answers as ``ping``."""
        return self.ping()

    def assume(self, index: int) -> None:
        """This standby takes the place of the lost worker ``index`` of its role. Nothing else depends on the
        index a standby was built with: the lost worker's state is loaded into it next (memory or storage)."""
        self.index = index

    def read_storage_marker(self, path: str, nonce: str) -> dict[str, Any]:
        """Whether this worker sees the marker the coordinator wrote (``problem`` None), and where it runs."""
        import ray

        from rayrl.checkpoint.storage_check import read_marker

        problem = read_marker(path, nonce, self.cfg.runner.checkpoint.storage_options)
        return {"problem": problem, "node": ray.get_runtime_context().get_node_id(),
                "ip": ray.util.get_node_ip_address()}

    def rendezvous_address(self, bind_localhost: bool) -> tuple[str, int]:
        """An address and a free port on this node for the group's store (127.0.0.1 on a single node)."""
        import ray

        host = "127.0.0.1" if bind_localhost else ray.util.get_node_ip_address()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            return host, s.getsockname()[1]
