"""Q3: how long from a lost worker or node to training again, in the job, against restarting the job?

From the timed run life of benchmarks.lifecycle: SIGKILL of a rollout worker, then of one actor rank, to
the next finished step (a standby takes the lost worker's place; for the rollout worker its samples are
regenerated in the job with nothing reloaded; for the actor rank the ranks re-form their group with it and
every part loads the newest step from its copy in memory), against SIGKILL of the whole job
(driver, Ray, every worker: a lost head node) and the same command started again, resuming from storage,
to its first finished step. Quick mode (the smoke test) runs no standbys: the actor rank is replaced by a
new process, and the rollout worker's loss and the node loss are skipped (said when it runs).

Node loss: a ``ray.cluster_utils.Cluster`` on this machine (a head without CPUs for the driver and the
coordinator, two worker nodes of 3 CPUs that the fleet fills, and a spare node of 6 CPUs added once the
fleet is up), joined through RAY_ADDRESS. Each actor rank reserves 2 CPUs, so the two ranks sit on the two
nodes and each rank's second memory copy on the other's; a standby of each role is placed on the spare node as
it joins. The node of the actor rank that shares it with the rollout worker is killed (raylet and workers, no
goodbye: a replacement is available for each of its workers; the other node's reference worker has no standby,
the role has none, and would be started anew) and the time to the next finished step is taken: that rank's
shards come from its copy on the surviving node. The GCS health check is tightened (checks
0.5 s apart, 3 misses), so that a killed node is declared dead in about 2 s rather than after the defaults'
much longer wait (benchmarks.cluster). Each figure carries its recovery's split (recovery_split) and the memory the copies take.
"""

from __future__ import annotations

import time

from benchmarks.cluster import FAST_HEALTH_CHECK, local_cluster, titles_below
from benchmarks.common import Figure, Settings, ratio_figure
from benchmarks.driver import launch
from benchmarks.lifecycle import (
    TIMEOUT_S, checkpoint_after, overrides, recovery_split, run_lifecycle, step_just_finished,
)

NAME = "recovery"
TARGET = 0.2  # issue 15: an actor rank's loss at most a fifth of a cold restart's time to the next step
NODE_LOSS_TARGET = 0.3  # issue 15: a node's loss, with a replacement available
ROLLOUT_TARGET = 0.15  # issue 15: a rollout worker's loss, with a standby
WORKER_NODES, WORKER_CPUS = 2, 3  # an actor rank (2 CPUs) and one other worker per node
SPARE_CPUS = 6  # room for every group the loss of one worker node replaces, however Ray places them
STEPS_AFTER = 2


def run(settings: Settings) -> list[Figure]:
    life = run_lifecycle(settings)
    standby = not settings.quick
    figures = [ratio_figure("recovery", "actor_kill_vs_cold_restart", [life.in_job_recovery_s], "s",
                            "cold_restart", [life.cold_restart_s], TARGET, at_least=False, state_gb=settings.e2e_gb,
                            coordinator_seconds_to_next_step=round(life.coordinator_recovery_s, 2),
                            standby=standby, split=life.in_job_split)]
    if settings.quick:
        print("recovery: node_loss_vs_cold_restart skipped in quick mode (a three-node cluster and a job on it: "
              "tests/test_recovery_cluster.py runs the same node losses)")
    else:
        node_loss_s, node_split = node_loss_recovery(settings)
        figures.append(ratio_figure("recovery", "node_loss_vs_cold_restart", [node_loss_s], "s", "cold_restart",
                                    [life.cold_restart_s], NODE_LOSS_TARGET, at_least=False, state_gb=settings.e2e_gb,
                                    spare_node=True, standby=standby, health_check=FAST_HEALTH_CHECK,
                                    split=node_split))
    if life.rollout_recovery_s is None:
        print("recovery: rollout_kill_vs_cold_restart skipped in quick mode (it needs standbys, which quick "
              "mode does not start)")
    else:
        figures.append(ratio_figure("recovery", "rollout_kill_vs_cold_restart", [life.rollout_recovery_s], "s",
                                    "cold_restart", [life.cold_restart_s], ROLLOUT_TARGET, at_least=False,
                                    state_gb=settings.e2e_gb, standby=True, split=life.rollout_split))
    return figures


def node_loss_recovery(settings: Settings) -> tuple[float, dict]:
    """Seconds from killing an actor rank's node to the next finished step, on a spare node; the split,
    with the host memory the copies take per rank."""
    with local_cluster() as (cluster, tmp):
        nodes = [cluster.add_node(num_cpus=WORKER_CPUS, temp_dir=tmp) for _ in range(WORKER_NODES)]
        cluster.wait_for_nodes()
        run = launch(settings.work_dir / "node_loss", "node-loss",
                     [*overrides(settings), "actor.num_cpus_per_worker=2"],
                     ray_address=cluster.address)
        try:
            run.wait_for("a committed checkpoint", checkpoint_after(0), TIMEOUT_S)
            cluster.add_node(num_cpus=SPARE_CPUS, temp_dir=tmp)  # now: the fleet is placed on the other two
            cluster.wait_for_nodes()
            if not settings.quick:  # the standbys, placed on the spare node as it joined
                run.wait_for("a standby of each role", lambda r: len(r.events_named("standby_ready")) >= 2, TIMEOUT_S)
            run.wait_for("a finished step", step_just_finished, TIMEOUT_S)
            victim = next(n for n in nodes
                          if titles_below(n, "ray::ActorWorker") and titles_below(n, "ray::RolloutWorker"))
            killed_at = time.time()
            cluster.remove_node(victim, allow_graceful=False)
            recovered = run.wait_for("recovery", lambda r: r.events_named("recovered"), TIMEOUT_S)[0]
            run.wait_for("steps after the recovery",  # so that a plot of this run shows training go on
                         lambda r: r.metrics[-1]["step"] >= recovered["step"] + STEPS_AFTER, TIMEOUT_S)
            split = recovery_split(run.events_named("failure")[0], recovered, killed_at)
            memory = run.events_named("memory_replicas")
            split["memory_copies_mb_per_rank"] = round(memory[0]["bytes_per_rank"] / 1e6, 1) if memory else None
            return recovered["time"] - killed_at, split
        finally:
            run.kill()
