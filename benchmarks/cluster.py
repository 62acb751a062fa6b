"""A Ray cluster of several nodes on this machine for the benchmarks that lose a node (``ray.cluster_utils``):
a head without CPUs (the driver and the coordinator live there) and worker nodes the caller adds. The GCS
health check is tightened (checks 0.5 s apart, 3 misses), so that a killed node is declared dead in about
2 s rather than after the defaults' much longer wait."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from benchmarks.driver import descendants, process_title

FAST_HEALTH_CHECK = {"health_check_period_ms": 500, "health_check_timeout_ms": 500,
                     "health_check_failure_threshold": 3}


@contextlib.contextmanager
def local_cluster() -> Iterator[tuple[object, str]]:
    """The cluster and its temp dir (pass it as ``temp_dir`` to ``add_node``); shut down and removed after."""
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="rrb-", dir="/tmp")  # short: Ray's socket paths have a length limit
    (Path(tmp) / "ray").mkdir()
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp  # where Cluster records its address
    try:
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "temp_dir": tmp, "include_dashboard": False, "_system_config": dict(FAST_HEALTH_CHECK)})
    finally:
        if saved is None:
            del os.environ["RAY_TMPDIR"]
        else:
            os.environ["RAY_TMPDIR"] = saved
    try:
        yield cluster, tmp
    finally:
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def titles_below(node, prefix: str) -> list[str]:
    """The titles of the processes below ``node``'s raylet that start with ``prefix`` (e.g. ``ray::ActorWorker``)."""
    raylet = node.all_processes["raylet"][0].process.pid
    return [t for t in map(process_title, descendants(raylet)) if t.startswith(prefix)]
