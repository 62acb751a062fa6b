"""The coordinator: a restartable Ray actor that owns the step loop, the save schedule and recovery.

Infrastructure failures (a worker, node or object lost; a hang) replace the worker groups they took
down (the others are kept), wait for resources, and resume every group from this run's latest valid
checkpoint. Program errors stop the run. When this process itself dies, Ray restarts it (max_restarts)
and the driver's ``run`` call is retried: the new process resumes from this run's own latest checkpoint,
never archiving, never going back to resume_dir.

The driver imports this module to launch the actor, so torch and what needs it (the data loader, the
workers) are imported where the actor uses them, in its own process, so the driver starts sooner (README,
"Measurements behind design choices").
"""

from __future__ import annotations

import logging
import os
import signal
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

from rayrl.checkpoint.errors import CheckpointError, CheckpointInvalid, NoValidCheckpoint
from rayrl.checkpoint.format import M_STEP
from rayrl.checkpoint.manifest import read_manifest
from rayrl.checkpoint.storage import storage_for
from rayrl.config import ConfigError, checkpoint_dir, config_changes, config_to_dict, trainer_state
from rayrl.data.tasks import get_task, run_reward_specs
from rayrl.elastic import Elastic
from rayrl.failures import InfraFailure, WorkerId, check_finite
from rayrl.managers import build_manager, resolve_manager
from rayrl.recovery import NEW_PROCESS, STANDBY, Recovery, RunFailed, replacement_plan
from rayrl.replicas import MemoryReplicas, MemoryStep
from rayrl.run_lock import RunLock
from rayrl.shared_storage import check_shared
from rayrl.runlog import EventLog, EventLogHandler, MetricsLog
from rayrl.trackers import Trackers, resolve
from rayrl.workers.group import remove_leftovers
from rayrl.workers.weight_sync import paths_event

if TYPE_CHECKING:
    from rayrl.pipeline import RolloutPipeline
    from rayrl.workers.fleet import Fleet

log = logging.getLogger(__name__)

FRESH_LOCK_WAIT_S = 10.0  # a run stopped a moment ago (Ctrl-C, a kill) may still be ending its coordinator
REPLACE_LOCK_WAIT_S = 60.0  # the dead driver's coordinator is killed by its Ray once that Ray notices

__all__ = ["Coordinator", "RunFailed"]


def _log_to(events: EventLog) -> None:
    """The coordinator's log lines go to events.jsonl only (the driver prints them from there, complete),
    not through Ray's log forwarding too."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, EventLogHandler)]:
        root.removeHandler(handler)  # a restarted coordinator's or a second run's handler
    root.addHandler(EventLogHandler(events))
    root.setLevel(logging.INFO)


class Coordinator:
    def __init__(self, cfg: Any, relaunch: dict[str, Any] | None = None) -> None:
        """``relaunch``: set by the driver when run_main.sh relaunched it after the previous driver died
        (attempt, max, exit_status, failure_time), so that the recovery is reported and timed."""
        import torch

        torch.set_num_threads(1)
        manager_cls, cfg = resolve_manager(cfg)  # runner.checkpoint as the manager's own config class
        self.cfg = cfg
        with warnings.catch_warnings():  # Ray deprecates an internal it uses for this property
            warnings.simplefilter("ignore")
            self.restarted = ray.get_runtime_context().was_current_actor_reconstructed
        self.actor_id = ray.get_runtime_context().get_actor_id() or "driver"  # the same across restarts
        self.run_dir = Path(cfg.runner.log_path)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.lock = RunLock(self.run_dir)
        self.checkpoint_dir = checkpoint_dir(cfg)
        self.manager = build_manager(manager_cls, cfg, self.checkpoint_dir)
        self.dataset = get_task(cfg.data).build_dataset(cfg.data.num_samples, cfg.runner.seed)
        self.reward_specs = run_reward_specs(cfg.data)
        self.metrics = MetricsLog(self.run_dir)
        loggers, self.loggers_said = resolve(cfg.runner.loggers)
        self.trackers = Trackers(self.run_dir, loggers, cfg.runner.experiment_name, config_to_dict(cfg))
        self.events = EventLog(self.run_dir)
        _log_to(self.events)
        self.recovery = Recovery(self.events, cfg.runner.max_restarts, cfg.runner.restart_backoff_s)
        self.replicas = MemoryReplicas(cfg.runner.checkpoint, self.events)
        self.elastic = Elastic(cfg, self.events)
        self.relaunch = relaunch
        self.fleet: Fleet | None = None
        self.stop_reason: str | None = None  # set by a preemption notice to this process or the driver
        self.stop_exits_process = False
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop("SIGTERM to the coordinator", True))

    def request_stop(self, reason: str, exit_process: bool = False) -> None:
        """A preemption notice: save at the next step boundary, then stop. The coordinator's own notice
        ends its process (Ray restarts it, resuming); the driver's returns ``preempted`` to the driver."""
        self.stop_reason, self.stop_exits_process = reason, exit_process

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        """Train to ``max_steps``, recovering from infrastructure failures within the budget, as the run
        directory's one writer (a process replacing a dead coordinator waits longer for the lock)."""
        replacing = self.restarted or self.relaunch is not None
        if not self.lock.acquire(wait_s=REPLACE_LOCK_WAIT_S if replacing else FRESH_LOCK_WAIT_S):
            log.warning("%s: this filesystem has no flock; nothing stops a second run from writing this run "
                        "directory", self.lock.path)
        try:
            return self._run()
        finally:
            self.trackers.close()
            self.lock.release()  # now, not when the process ends: the same command may start again at once

    def _run(self) -> dict[str, Any]:
        """Start, and after each infrastructure failure recover and start again. Recovery runs inside the
        same error handling as training: whatever it raises tears the fleet down and is reported alike
        (a program error stops the run, another lost worker is a failure of the same incident)."""
        self.events.emit("loggers", self.loggers_said, loggers=self.trackers.names)
        self._report_own_loss()
        restarted = self.restarted
        failure: InfraFailure | None = None
        start_dir: str | None = None
        while True:
            try:
                memory = None
                if failure is not None:
                    self._recover(failure)
                    failure, restarted = None, True
                    memory = self.replicas.usable(self.manager.list_steps)
                    if memory is not None and memory.trainer_state["world_sizes"] != self.elastic.world_sizes():
                        memory = None  # a copy of another size (before a resize): storage reshards it
                start_dir = None if memory is not None else self._start_point(restarted)
                if start_dir is None and memory is None:  # nothing to load into kept workers: they restart too
                    self._teardown()
                outcome = self._train(start_dir, memory)
                if outcome["status"] != "grow":
                    return outcome
                self.elastic.grow(outcome["roles"], outcome["final_step"])  # from the step just saved
                self.fleet.resize(self.elastic.sizes)
                restarted = True
            except InfraFailure as err:
                failure = err
            except RunFailed:
                self._teardown()
                raise
            except NoValidCheckpoint as err:  # the step failed while loading, and no valid one is before it
                self._teardown()
                raise self._no_valid(err) from None
            except Exception as err:
                if isinstance(err, CheckpointInvalid) and start_dir is not None and not self._storage(start_dir).exists(start_dir):
                    # a file of the step failed its checksum while the workers read it: the manager moved
                    # the step aside, so resume from the next valid one into the same workers
                    restarted = True
                    continue
                self._teardown()
                event = "config_error" if isinstance(err, ConfigError) else "program_error"
                self.events.emit(event, f"stopped by a {event.replace('_', ' ')} (not retried): {err}",
                                 error=type(err).__name__)
                raise
            except BaseException:
                self._teardown()
                raise

    def _recover(self, failure: InfraFailure) -> None:
        """The one place that decides what an infrastructure failure costs: which groups to replace (the
        others are kept and reloaded), the restart budget (a failure found while recovering from another
        is the same incident: see Recovery.failed), the backoff and, for an elastic group whose resources did
        not come back, the smaller size it continues at (rayrl.elastic). The checkpoint to resume from is chosen
        next, by ``_start_point``, as at any start."""
        try:
            where = self.fleet.location(failure.workers) if self.fleet is not None else {}
        except Exception as err:  # noqa: BLE001 -- only for the report: a lost node may not answer
            log.warning("could not locate %s: %s", failure.what, err)
            where = {}
        plan = self._release_failed(failure)
        delay = self.recovery.failed(failure.what, failure.cause, failure.node or where.get("node"),
                                     where.get("pid"), preemption=failure.preemption,
                                     replaced=sorted(plan) if plan is not None else None, replaced_by=plan)
        if self.elastic.shrink(failure, max(self.manager.list_steps(), default=0)) and self.fleet is not None:
            self.fleet.resize(self.elastic.sizes)
        time.sleep(delay)

    def _storage(self, path: str) -> Any:
        return storage_for(path, self.cfg.runner.checkpoint.storage_options)

    def _start_point(self, restarted: bool) -> str | None:
        """The step directory to start from (None: fresh). Steps that exist but none of which verifies stop
        the run (exit 2), touching nothing; an OSError reading them is the storage's failure, recovered
        from under the restart budget like a lost worker."""
        runner = self.cfg.runner
        try:
            return self.manager.prepare(runner.resume_dir, runner.resume_mode, restarted)
        except NoValidCheckpoint as err:
            raise self._no_valid(err) from None
        except OSError as err:
            raise InfraFailure(WorkerId("checkpoint storage"), f"{type(err).__name__} reading the checkpoints: "
                               f"{err} (an I/O error, not a damaged checkpoint: nothing moved aside)") from err

    def _no_valid(self, err: NoValidCheckpoint) -> ConfigError:
        """Checkpoints exist and none verifies: said in events.jsonl, and a config error (exit 2) naming every
        step and why. Starting over would silently throw the run away; that is resume_mode=disable's job."""
        self.events.emit("no_valid_checkpoint", f"no checkpoint under {err.path} verifies: {err.reason}",
                         path=err.path, steps={str(step): why for step, why in err.steps.items()})
        return ConfigError(
            f"runner.resume_mode: no checkpoint under {err.path} verifies ({err.reason}); nothing was "
            "moved or deleted. Repair or remove them, start from another with runner.resume_dir=..., or "
            "start over with runner.resume_mode=disable (which archives them)")

    def _release_failed(self, failure: InfraFailure) -> dict[str, str] | None:
        """Make the groups ``failure`` took down whole (by standbys or new processes: replacement_plan) and keep
        the others (they are reloaded, saving their start-up); how each was replaced. Anything unexpected
        here tears the whole fleet down, as does a failure that leaves no group standing and no standby."""
        fleet = self.fleet
        if fleet is None:
            return None
        every = [g.name for g in fleet.groups]
        try:
            lost = fleet.lost_workers(failure)
            plan = replacement_plan(lost, fleet.standbys.ready({g for g, i in lost.items() if i is not None}))
            if set(plan) != set(every) or STANDBY in plan.values():
                self._settle_save_in_flight(actor_kept="actor" not in plan)
                fleet.replace(plan, lost)
                return plan
        except Exception as err:  # noqa: BLE001 -- another worker lost, a hang: start from nothing
            log.warning("keeping the workers that survived %s failed (%s); restarting every group",
                        failure.what, err)
        self._teardown()
        return dict.fromkeys(every, NEW_PROCESS)

    def _settle_save_in_flight(self, actor_kept: bool) -> None:
        """An asynchronous save still writing when a group failed. Only the actor shards are written in the
        background (every other part is on disk once the save call returns), so with the actor group kept
        the step can still complete: let it finish and commit it, rather than lose it and redo its steps
        (a rollout hang caught by the step timeout would otherwise fall back a whole save interval). With
        the actor group lost, or the save failing, it is dropped and resume uses the step before."""
        if actor_kept:
            try:
                self.manager.wait()
            except CheckpointError as err:  # the manager dropped it
                log.warning("the save in flight failed (%s); resuming from the checkpoint before it", err)
            # A save the manager dropped earlier (another part failed as it began) may still be writing on the
            # kept ranks: they finish it and forget it, its error included, before they are reloaded.
            self.fleet.wait_checkpoint(self.fleet.actor.call("abandon_save"), "actor",
                                       "finishing a dropped checkpoint save")
        self.manager.abort()

    def _report_own_loss(self) -> None:
        """This process replaces a dead coordinator (restarted by Ray) or a dead driver's (relaunched by
        run_main.sh): report it as a failure, timed from the last sign of life of the run."""
        node = ray.get_runtime_context().get_node_id()
        if self.restarted:  # pinned to the driver's node, so the dead one ran on this node too
            for name in remove_leftovers(self.actor_id):
                log.info("removed placement group %s of the coordinator's previous process", name)
            self.recovery.failed("coordinator", "its process died; Ray restarted it, resuming this run", node,
                                 counted=False, failure_time=self._last_write(), event="coordinator_restarted")
        elif self.relaunch:
            r = self.relaunch
            status = r["exit_status"]
            how = f"killed by signal {status - 128}" if status > 128 else f"exit status {status}"
            self.recovery.failed("driver", f"exited ({how}); run_main.sh relaunched it "
                                 f"({r['attempt']}/{r['max']}) with runner.resume_mode=auto", node,
                                 counted=False, failure_time=r["failure_time"], event="driver_relaunched")

    def _last_write(self) -> float:
        """When the dead coordinator last wrote a step or an event: when it was last known alive."""
        times = [p.stat().st_mtime for p in (self.metrics.path, self.events.path) if p.exists()]
        return max(times, default=time.time())

    def _train(self, start_dir: str | None, memory: MemoryStep | None = None) -> dict[str, Any]:
        """Train from ``start_dir`` (storage), ``memory`` (the newest step's copy in memory) or, with
        neither, from scratch."""
        from rayrl.data.loader import BatchStream
        from rayrl.participants import ActorPart, DataPart, HFExportPart, RolloutPart
        from rayrl.pipeline import RolloutPipeline
        from rayrl.step import Scoring, run_step, sync_weights
        from rayrl.workers.fleet import Fleet

        cfg, runner = self.cfg, self.cfg.runner
        step = (memory.step if memory is not None else _step_of(start_dir, self._storage(start_dir))
                if start_dir is not None else 0)
        if step >= runner.max_steps:  # nothing to load: no workers needed (and none kept from a recovery)
            self._teardown()
            self.recovery.resumed(step)
            self.metrics.truncate_after(step)
            self.events.emit("nothing_to_do", f"Nothing left to do: the checkpoint is at step {step}, "
                             f"runner.max_steps={runner.max_steps}", step=step, path=start_dir)
            return {"status": "done", "final_step": step}
        if self.fleet is None:
            if self.restarted or self.relaunch is not None:
                self.elastic.resume(step)
            self.fleet = Fleet(cfg, owner=self.actor_id, sizes=self.elastic.sizes, emit=self.events.emit)
        fleet = self.fleet
        t0 = time.perf_counter()
        new_roles = fleet.start(report=lambda message: self.events.emit("waiting_for_resources", message))
        if fleet.weight_paths is not None and new_roles & {"actor", "rollout"}:
            message, fields = paths_event(fleet.weight_paths)
            self.events.emit("weight_sync", message, **fields)
        start_s = time.perf_counter() - t0  # resources, worker processes (imports), process group
        check_shared(fleet, new_roles, cfg, self.checkpoint_dir, self.events.emit)
        stream = BatchStream(self.dataset, cfg.data.batch_size, runner.seed)
        pipeline = RolloutPipeline(fleet, cfg, stream, self.recovery)
        parts = [ActorPart(fleet), RolloutPart(fleet), DataPart(pipeline, cfg.runner.checkpoint.storage_options)]
        export, export_every = HFExportPart(fleet), cfg.runner.checkpoint.export_hf_every
        if start_dir is not None or memory is not None:
            t0 = time.perf_counter()
            state, start_dir, where = self._load(start_dir, memory, parts, pipeline)
            load_s = time.perf_counter() - t0  # every role restored; the weight sync after it is not loading
            step = int(state["global_step"])
            t0 = time.perf_counter()
            pipeline.weights_sent(step, [], sync_weights(fleet, keep=pipeline.k > 0)[1])
            sync_s = time.perf_counter() - t0
            source = "storage" if start_dir is not None else "memory"
            times = {"start_s": start_s, "group_s": fleet.group_s, "load_s": load_s, "sync_s": sync_s}
            self.events.emit("resumed", f"Resumed from {where}: next step {step + 1}", step=step,
                             path=start_dir, source=source, **times)
            self.recovery.loaded_from(source, **times)
            self._report_config_changes(state, step, where)
        else:
            self.events.emit("fresh_start", "No checkpoint to resume from: starting fresh at step 1",
                             start_s=start_s)
        self.recovery.resumed(step)
        self.metrics.truncate_after(step)
        self.trackers.open(step if start_dir is not None or memory is not None else None)
        scoring = Scoring(cfg, self.reward_specs)
        while step < runner.max_steps:
            step += 1
            metrics = run_step(fleet, cfg, scoring, pipeline, step)
            check_finite(metrics, step)
            metrics.update(consumed_samples=pipeline.consumed_samples, actor_world_size=fleet.actor.size,
                           rollout_workers=fleet.rollout.size)
            self.trackers.log(self.metrics.append(metrics))
            self.recovery.step_finished(step)
            self.replicas.step_finished()
            fleet.tend_standbys()
            self.manager.poll()
            self.replicas.promote(self.manager.list_steps)
            notices = fleet.preemption_notices(pipeline.busy) if runner.save_on_preemption else []
            stopping = self.stop_reason is not None or bool(notices)
            growing = self.elastic.growable() if step < runner.max_steps and not stopping else []
            if (step % (runner.save_interval or runner.max_steps + 1) == 0 or step == runner.max_steps or stopping
                    or growing):
                t0 = time.perf_counter()
                exporting = export_every and step % export_every == 0
                pipeline.settle()  # a checkpoint holds finished rollouts only
                saved_state = trainer_state(cfg, step, metrics)
                self.manager.save(step, [*parts, export] if exporting else parts, saved_state)
                self.replicas.on_save(step, fleet, saved_state, pipeline)
                blocking = time.perf_counter() - t0
                self.events.emit("save", f"checkpoint of step {step}: training blocked {blocking:.2f}s",
                                 step=step, blocking_s=blocking)
            if stopping:
                self.manager.wait()
                self._on_notice(step, notices)
                return {"status": "preempted", "final_step": step}
            if growing:  # rebuilt at full size from the step just saved (rayrl.elastic)
                self.manager.wait()
                return {"status": "grow", "final_step": step, "roles": growing}
        self.manager.wait()
        self._teardown()
        return {"status": "done", "final_step": step}

    def _load(self, start_dir: str | None, memory: MemoryStep | None, parts: list, data: RolloutPipeline
              ) -> tuple[dict[str, Any], str | None, str]:
        """Load every part from ``memory`` or else ``start_dir``; the trainer state, the step directory read
        (None: none, loaded from memory) and what was loaded, for the log. A memory copy that cannot be
        loaded after all (lost in the meantime) falls back to storage within the same recovery."""
        if memory is not None:
            try:
                return self.replicas.load(memory, self.fleet, data), None, f"step {memory.step} in memory"
            except InfraFailure as err:
                start_dir = self._start_point(True)
                if start_dir is None:
                    raise
                log.warning("could not load step %d from memory (%s); loading %s", memory.step, err, start_dir)
        return self.manager.load(start_dir, parts), start_dir, start_dir

    def _report_config_changes(self, state: dict[str, Any], step: int, start_dir: str) -> None:
        """One warning listing every key the current config sets differently from the checkpoint's: the
        current config is the one in force (the LR schedule included), so a change is worth seeing."""
        changed = config_changes(state.get("config") or {}, config_to_dict(self.cfg))
        if changed:
            listed = "; ".join(f"{key}: {old} -> {new}" for key, (old, new) in changed.items())
            self.events.emit("config_changed", f"WARNING: the config differs from the checkpoint's (step {step}); "
                             f"the current one is in force: {listed}", step=step, path=start_dir, changed=changed)

    def _on_notice(self, step: int, notices: list[WorkerId]) -> None:
        """After the notice's checkpoint is on disk: a worker's notice hands over to recovery; the
        coordinator's own (or the driver's) ends this process so that it comes back resuming."""
        if notices:
            raise InfraFailure(notices[0], f"preemption notice (SIGTERM); step {step} saved", preemption=True)
        self.events.emit("preempted", f"{self.stop_reason}: step {step} saved; stopping", step=step)
        self._teardown()
        if self.stop_exits_process:
            os._exit(75)  # Ray restarts the coordinator, which resumes from the step just saved

    def _teardown(self) -> None:
        if self.fleet is not None:
            self.manager.abort()
            self.fleet.shutdown()
            self.fleet = None


def _step_of(step_dir: str, storage: Any) -> int:
    """The step a checkpoint holds, from its manifest; -1 when it has none (a custom manager's layout):
    then the workers load it and its trainer state says."""
    try:
        return int(read_manifest(step_dir, storage)[M_STEP])
    except CheckpointError:
        return -1
