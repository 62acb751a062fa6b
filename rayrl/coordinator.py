"""The coordinator: a restartable Ray actor that owns the step loop, the save schedule and recovery.

Infrastructure failures (a worker, node or object lost; a hang) tear the fleet down, wait for resources,
rebuild it and resume from this run's latest valid checkpoint. Program errors stop the run.
"""

from __future__ import annotations

import logging
import os
import platform
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import ray
import torch

import rayrl
from rayrl.checkpoint.manager import load_manager_class
from rayrl.config import config_to_dict
from rayrl.data.loader import BatchStream
from rayrl.data.tasks import get_task
from rayrl.failures import InfraFailure
from rayrl.participants import ActorPart, DataPart, RolloutPart
from rayrl.runlog import EventLog, MetricsLog
from rayrl.step import run_step, sync_weights
from rayrl.workers.fleet import Fleet

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0


class RunFailed(RuntimeError):
    """Recovery budget exhausted; the message carries the history of what died."""


class Coordinator:
    def __init__(self, cfg: Any) -> None:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        torch.set_num_threads(1)
        self.cfg = cfg
        with warnings.catch_warnings():  # Ray deprecates an internal it uses for this property
            warnings.simplefilter("ignore")
            self.restarted = ray.get_runtime_context().was_current_actor_reconstructed
        self.run_dir = Path(cfg.runner.log_path)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        manager_cls = load_manager_class(cfg.runner.checkpoint.manager_class)
        self.manager = manager_cls(cfg.runner.checkpoint, str(self.run_dir / "checkpoints"))
        self.task = get_task(cfg.data)
        self.dataset = self.task.build_dataset(cfg.data.num_samples, cfg.runner.seed)
        self.metrics = MetricsLog(self.run_dir)
        self.events = EventLog(self.run_dir)
        self.fleet: Fleet | None = None
        self.stop_reason: str | None = None  # set by a preemption notice to this process or the driver
        self.stop_exits_process = False
        self.failure_time: float | None = None
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop("SIGTERM to the coordinator", True))

    def request_stop(self, reason: str, exit_process: bool = False) -> None:
        """A preemption notice: save at the next step boundary, then stop. The coordinator's own notice
        ends its process (Ray restarts it, resuming); the driver's returns ``preempted`` to the driver."""
        self.stop_reason, self.stop_exits_process = reason, exit_process

    def node_and_pid(self) -> tuple[str, int]:
        return ray.get_runtime_context().get_node_id(), os.getpid()

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        """Train to ``max_steps``, recovering from infrastructure failures within the budget."""
        runner = self.cfg.runner
        if self.restarted:
            self.events.emit("coordinator_restarted", "coordinator restarted by Ray; resuming this run",
                             node=ray.get_runtime_context().get_node_id())
            self.failure_time = time.time()
        start_dir = self.manager.prepare(runner.resume_dir, runner.resume_mode, self.restarted)
        history: list[str] = []
        restarts = 0
        while True:
            try:
                return self._train(start_dir)
            except InfraFailure as failure:
                self.failure_time = self.failure_time or time.time()
                self._teardown()
                counted = not failure.preemption
                restarts += counted
                history.append(f"{failure} (node {failure.node or '?'})")
                self.events.emit("failure", f"{failure.what} failed: {failure.cause}; recovering",
                                 what=failure.what, cause=failure.cause, node=failure.node,
                                 counted=counted, restarts=restarts)
                if restarts > runner.max_restarts:
                    self.events.emit("run_failed", f"giving up after {restarts - 1} recoveries")
                    raise RunFailed(f"run failed after {restarts - 1} recoveries (runner.max_restarts="
                                    f"{runner.max_restarts}); what died:\n  " + "\n  ".join(history)) from None
                if counted:
                    time.sleep(min(MAX_BACKOFF_S, runner.restart_backoff_s * 2 ** (restarts - 1)))
                start_dir = self.manager.prepare(runner.resume_dir, runner.resume_mode, restarted=True)
            except BaseException:
                self._teardown()
                raise

    def _train(self, start_dir: str | None) -> dict[str, Any]:
        cfg, runner = self.cfg, self.cfg.runner
        self.fleet = fleet = Fleet(cfg)
        fleet.start()
        stream = BatchStream(self.dataset, cfg.data.batch_size, runner.seed)
        parts = [ActorPart(fleet), RolloutPart(fleet), DataPart(stream)]
        step = 0
        if start_dir is not None:
            state = self.manager.load(start_dir, parts)
            step = int(state["global_step"])
            sync_weights(fleet)
            self.events.emit("resumed", f"Resumed from {start_dir}: next step {step + 1}",
                             step=step, path=start_dir)
        else:
            self.events.emit("fresh_start", "No checkpoint to resume from: starting fresh at step 1")
        self.metrics.truncate_after(step)
        if step >= runner.max_steps:
            self.events.emit("nothing_to_do", f"Nothing left to do: the checkpoint is at step {step}, "
                             f"runner.max_steps={runner.max_steps}")
            self._teardown()
            return {"status": "done", "final_step": step}
        while step < runner.max_steps:
            step += 1
            items, epoch = stream.next()
            metrics = run_step(fleet, cfg, self.task, items, step)
            metrics.update(epoch=epoch, consumed_samples=stream.consumed_samples)
            self.metrics.append(metrics)
            self._note_recovered(step)
            self.manager.poll()
            notices = fleet.preemption_notices() if runner.save_on_preemption else []
            stopping = self.stop_reason is not None or bool(notices)
            if step % max(runner.save_interval, runner.max_steps + 1) == 0 or step == runner.max_steps or stopping:
                t0 = time.perf_counter()
                self.manager.save(step, parts, self._trainer_state(step, metrics, stream))
                blocking = time.perf_counter() - t0
                self.events.emit("save", f"checkpoint of step {step}: training blocked {blocking:.2f}s",
                                 step=step, blocking_s=blocking)
            if stopping:
                self.manager.wait()
                self._on_notice(step, notices)
                return {"status": "preempted", "final_step": step}
        self.manager.wait()
        self._teardown()
        return {"status": "done", "final_step": step}

    def _on_notice(self, step: int, notices: list[str]) -> None:
        """After the notice's checkpoint is on disk: a worker's notice hands over to recovery; the
        coordinator's own (or the driver's) ends this process so that it comes back resuming."""
        if notices:
            raise InfraFailure(notices[0], f"preemption notice (SIGTERM); step {step} saved", preemption=True)
        self.events.emit("preempted", f"{self.stop_reason}: step {step} saved; stopping", step=step)
        self._teardown()
        if self.stop_exits_process:
            os._exit(75)  # Ray restarts the coordinator, which resumes from the step just saved

    def _note_recovered(self, step: int) -> None:
        if self.failure_time is not None:
            seconds = time.time() - self.failure_time
            self.events.emit("recovered", f"training again: step {step} finished {seconds:.1f}s after the failure",
                             step=step, seconds_to_next_step=seconds)
            self.failure_time = None

    def _trainer_state(self, step: int, metrics: dict[str, Any], stream: BatchStream) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "global_step": step, "consumed_samples": stream.consumed_samples, "epoch": stream.epoch,
            "metrics": metrics,
            "world_sizes": {"actor": cfg.actor.world_size, "rollout": cfg.rollout.num_workers},
            "config": config_to_dict(cfg),
            "versions": {"rayrl": rayrl.__version__, "torch": torch.__version__, "ray": ray.__version__,
                         "python": platform.python_version()},
        }

    def _teardown(self) -> None:
        if self.fleet is not None:
            self.manager.abort()
            self.fleet.shutdown()
            self.fleet = None
