"""Q3: how long from a lost worker or node to training again, in the job, against restarting the job?

From the timed run life of benchmarks.lifecycle: SIGKILL of one actor rank to the next finished step
(the coordinator tears the fleet down, rebuilds it and resumes from the run's latest checkpoint), against
SIGKILL of the whole job (driver, Ray, every worker: a lost head node) and the same command started again,
resuming, to its first finished step.

Node loss: a ``ray.cluster_utils.Cluster`` on this machine (a head without CPUs for the driver and the
coordinator, two worker nodes of 4 CPUs, one of them spare), joined through RAY_ADDRESS; the node holding
the actor ranks is killed (raylet and workers, no goodbye) and the time to the next finished step is taken.
The GCS health check is tightened (checks 0.5 s apart, 3 misses), so that a killed node is declared dead in
about 2 s rather than after the defaults' much longer wait.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

from benchmarks.common import Figure, Settings, ratio_figure
from benchmarks.driver import descendants, launch, process_title
from benchmarks.lifecycle import TIMEOUT_S, checkpoint_after, overrides, run_lifecycle, step_just_finished

NAME = "recovery"
TARGET = 1 / 3  # issue 7: in-job recovery at most a third of a cold restart's time to the next step
FAST_HEALTH_CHECK = {"health_check_period_ms": 500, "health_check_timeout_ms": 500,
                     "health_check_failure_threshold": 3}
WORKER_CPUS = 4  # 2 actor ranks + 1 rollout + 1 reference: the whole fleet fits on one worker node
STEPS_AFTER = 2


def run(settings: Settings) -> list[Figure]:
    life = run_lifecycle(settings)
    node_loss_s = node_loss_recovery(settings)
    return [ratio_figure("recovery", "actor_kill_vs_cold_restart", [life.in_job_recovery_s], "s",
                         "cold_restart", [life.cold_restart_s], TARGET, at_least=False, state_gb=settings.e2e_gb,
                         coordinator_seconds_to_next_step=round(life.coordinator_recovery_s, 2)),
            ratio_figure("recovery", "node_loss_vs_cold_restart", [node_loss_s], "s", "cold_restart",
                         [life.cold_restart_s], state_gb=settings.e2e_gb, spare_node=True,
                         health_check=FAST_HEALTH_CHECK)]


def node_loss_recovery(settings: Settings) -> float:
    """Seconds from killing the actors' node to the next finished step, on a spare node."""
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="rrb-", dir="/tmp")  # short: Ray's socket paths have a length limit
    (Path(tmp) / "ray").mkdir()
    with _environ("RAY_TMPDIR", tmp):  # where Cluster records its address
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "temp_dir": tmp, "include_dashboard": False, "_system_config": dict(FAST_HEALTH_CHECK)})
    try:
        nodes = [cluster.add_node(num_cpus=WORKER_CPUS, temp_dir=tmp) for _ in range(2)]
        cluster.wait_for_nodes()
        run = launch(settings.work_dir / "node_loss", "node-loss", overrides(settings), ray_address=cluster.address)
        try:
            run.wait_for("a committed checkpoint", checkpoint_after(0), TIMEOUT_S)
            run.wait_for("a finished step", step_just_finished, TIMEOUT_S)
            victim = next(n for n in nodes if _titles_below(n, "ray::ActorWorker"))
            killed_at = time.time()
            cluster.remove_node(victim, allow_graceful=False)
            recovered = run.wait_for("recovery", lambda r: r.events_named("recovered"), TIMEOUT_S)[0]
            run.wait_for("steps after the recovery",  # so that a plot of this run shows training go on
                         lambda r: r.metrics[-1]["step"] >= recovered["step"] + STEPS_AFTER, TIMEOUT_S)
            return recovered["time"] - killed_at
        finally:
            run.kill()
    finally:
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _environ(key: str, value: str) -> Iterator[None]:
    saved = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if saved is None:
            del os.environ[key]
        else:
            os.environ[key] = saved


def _titles_below(node, prefix: str) -> list[str]:
    raylet = node.all_processes["raylet"][0].process.pid
    return [t for t in map(process_title, descendants(raylet)) if t.startswith(prefix)]
