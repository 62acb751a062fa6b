"""A run directory the workers cannot see stops the run before step 1 (exit 2).

The marker itself is checked first without Ray (a local path through fsspec). Then a real two-node Ray cluster on this machine: a head with no CPUs (the driver and the coordinator live there)
and a worker node started with ``ray start`` inside a mount namespace of its own (``unshare -m``), where a
private tmpfs covers the output directory, so that every process of that node sees an empty filesystem of
its own at the run directory, as a worker node with a node-local ``runner.output_dir`` does. The node holds
every worker (its custom resource says which node it is). The run must stop before step 1 with exit 2,
naming that node (IP and Ray node id), the path and the fix, with an event in events.jsonl, and leave no
marker or unfinished save behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rayrl.checkpoint.format import STORAGE_MARKER_FILE, TEMP_PREFIX
from rayrl.checkpoint.storage_check import read_marker, remove_marker, write_marker
from tests.support import (
    checkpoints_dir, env_for_tests, events_named, kill_session, rayrl_cmd, rayrl_stderr_lines, run_dir,
    start_local_cluster, stop_local_cluster, wait_until,
)

PRIVATE = "private_disk"  # the custom resource of the node whose filesystem is its own
WORKER_CPUS = 3  # 2 actor ranks + 1 rollout worker


def _private_node(address: str, temp_dir: str, covered: Path) -> subprocess.Popen:
    """``ray start`` joining ``address`` in its own mount namespace with a private tmpfs over ``covered``."""
    ray_cli = shutil.which("ray", path=os.path.dirname(sys.executable))
    start = (f"{ray_cli} start --block --address={address} --temp-dir={temp_dir} --num-cpus={WORKER_CPUS} "
             f"--resources='{json.dumps({PRIVATE: 1})}' --disable-usage-stats")
    script = f"mount --make-rprivate / && mount -t tmpfs tmpfs {covered} && exec {start}"
    return subprocess.Popen(["unshare", "-m", "bash", "-c", script], env=env_for_tests(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for_private_node(address: str) -> dict:
    """The Ray node record of the node with the custom resource, once it has joined."""
    import ray

    ray.init(address=address, log_to_driver=False)
    try:
        return wait_until(lambda: next((n for n in ray.nodes() if n["Alive"] and n["Resources"].get(PRIVATE)),
                                       None), 120, "the private node to join", interval=0.5)
    finally:
        ray.shutdown()


def test_the_marker_is_read_back_only_where_it_was_written(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints"
    path, nonce = write_marker(str(ckpt))
    assert path == f"{ckpt}/{STORAGE_MARKER_FILE}" and read_marker(path, nonce) is None
    assert "another" in read_marker(path, "0" * 32)  # the same path holding another nonce: another filesystem
    remove_marker(path)
    assert not list(ckpt.iterdir()) and "not there" in read_marker(path, nonce)
    remove_marker(path)  # gone already: nothing to do


@pytest.mark.slow
def test_a_run_directory_a_worker_node_cannot_see_stops_before_step_1(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    cluster = start_local_cluster("rsc-", num_cpus=0)
    node = None
    try:
        node = _private_node(cluster.address, cluster.temp_dir, out)
        private = _wait_for_private_node(cluster.address)
        proc = subprocess.run(rayrl_cmd(out, "runner.max_steps=3", "runner.save_interval=1"),
                              env=env_for_tests(RAY_ADDRESS=cluster.address), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=600)
    finally:
        if node is not None:
            kill_session(node)
        stop_local_cluster(cluster)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = rayrl_stderr_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr[-3000:]
    ckpt = checkpoints_dir(out)
    for said in (private["NodeManagerAddress"], private["NodeID"], str(ckpt), "shared filesystem",
                 "object storage"):
        assert said in lines[0], (said, lines[0])
    assert "Traceback" not in proc.stderr
    (event,) = events_named(out, "storage_not_shared")
    assert event["node"] == private["NodeID"] and event["ip"] == private["NodeManagerAddress"], event
    assert event["path"] == str(ckpt), event
    assert not (run_dir(out) / "metrics.jsonl").exists() or not (run_dir(out) / "metrics.jsonl").read_text()
    assert not events_named(out, "save")
    assert not ckpt.exists() or not list(ckpt.iterdir()), list(ckpt.iterdir())  # no marker, no step, no .tmp-*
    assert not list(run_dir(out).rglob(f"{TEMP_PREFIX}*"))
    print(f"\n{lines[0]}")
