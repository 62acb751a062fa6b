"""Shared helpers for tests that run rayrl for real: subprocesses, kills, and reading what a run left."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from rayrl.checkpoint.format import ACTOR_DIR, CHECKPOINTS_DIR, MODEL_KEY, TRACKER_FILE, step_dir_name

REPO = Path(__file__).resolve().parent.parent
EXPERIMENT = "t"

# A small, fast job: two actor ranks, one rollout worker; ~0.1 s per step here. No reference worker (one
# process less to start per run): the runs that test the KL term and that worker add WITH_REFERENCE.
FAST = [
    f"runner.experiment_name={EXPERIMENT}",
    "actor.model.hidden_size=32", "actor.model.num_layers=2", "actor.model.num_heads=2",
    "actor.model.intermediate_size=64",
    "data.batch_size=4", "data.num_samples=32", "rollout.n_samples_per_prompt=4", "rollout.max_new_tokens=8",
    "runner.restart_backoff_s=0.1", "reference.enabled=false",
]
WITH_REFERENCE = "reference.enabled=true"


def rayrl_cmd(output_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "rayrl.main", "--config", str(REPO / "configs/grpo_tiny.yaml"),
            f"runner.output_dir={output_dir}", *FAST, *overrides]


def env_for_tests(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def hang_env(steps: str, **extra: str) -> dict[str, str]:
    """env_for_tests with a rollout worker hanging at the start of each of ``steps`` ("N[,M...]"), once per
    run directory (marker ``<run dir>/.test-hang-<N>``): tests/hang_hook/sitecustomize.py, first on the
    run's PYTHONPATH, puts the hang in. The run must start its own Ray (not the shared one), so that its
    workers inherit this environment."""
    env = env_for_tests(RAYRL_TEST_HANG_AT_STEP=steps, **extra)
    env["PYTHONPATH"] = str(REPO / "tests" / "hang_hook") + os.pathsep + env["PYTHONPATH"]
    return env


def start_local_cluster(prefix: str, **head_node_args):
    """A ray.cluster_utils.Cluster head on this machine in a short temp dir of its own (Ray's socket paths
    have a length limit), dashboard off; ``stop_local_cluster`` shuts it down and removes the dir."""
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    (Path(tmp) / "ray").mkdir()
    before = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp  # Cluster records its address under $RAY_TMPDIR/ray
    try:
        cluster = Cluster(initialize_head=True,
                          head_node_args={"temp_dir": tmp, "include_dashboard": False, **head_node_args})
    finally:
        os.environ.pop("RAY_TMPDIR") if before is None else os.environ.update(RAY_TMPDIR=before)
    cluster.temp_dir = tmp
    return cluster


def stop_local_cluster(cluster) -> None:
    try:
        cluster.shutdown()
    finally:
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)


_SHARED_RAY = None  # the cluster of shared_ray_env(), started on first use


def shared_ray_env(**extra: str) -> dict[str, str]:
    """env_for_tests joining one local Ray instance kept for the whole test session (the driver's
    RAY_ADDRESS path): a run that ends on its own saves starting and stopping a private Ray (~5 s).
    Runs whose test kills the driver's whole session (a lost machine) start their own instead."""
    global _SHARED_RAY
    if _SHARED_RAY is None:
        _SHARED_RAY = start_local_cluster("rrs-", num_cpus=8)
    return env_for_tests(RAY_ADDRESS=_SHARED_RAY.address, **extra)


def stop_shared_ray() -> None:
    global _SHARED_RAY
    if _SHARED_RAY is not None:
        stop_local_cluster(_SHARED_RAY)
        _SHARED_RAY = None


def run_rayrl(output_dir: Path, *overrides: str, timeout: float = 300, env: dict | None = None
              ) -> subprocess.CompletedProcess:
    """Run the driver to completion (on the shared Ray unless ``env`` says otherwise); stdout and stderr
    together in ``.stdout``."""
    return subprocess.run(rayrl_cmd(output_dir, *overrides), cwd=REPO, env=env or shared_ray_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


def spawn_rayrl(output_dir: Path, *overrides: str, env: dict | None = None, cmd: list[str] | None = None
                ) -> subprocess.Popen:
    """Start the driver in its own session (so a kill can take its whole process group)."""
    log = tempfile.NamedTemporaryFile("w+", prefix="rayrl-test-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd or rayrl_cmd(output_dir, *overrides), cwd=REPO, env=env or env_for_tests(),
                            stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=_ctrl_c_as_in_a_terminal)
    proc.log_path = log.name  # Popen.stdout is None when output goes to a file
    return proc


def _ctrl_c_as_in_a_terminal() -> None:
    """SIGINT as a terminal's Ctrl-C finds it: a suite started in the background (``cmd &``) has SIGINT
    ignored, and its children would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def output_of(proc: subprocess.Popen) -> str:
    return Path(proc.log_path).read_text()


def run_dir(output_dir: Path) -> Path:
    return output_dir / EXPERIMENT


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def tracker_step(output_dir: Path) -> int | None:
    try:
        return int((run_dir(output_dir) / CHECKPOINTS_DIR / TRACKER_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def read_metrics(output_dir: Path) -> list[dict]:
    path = run_dir(output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rewards(output_dir: Path) -> list[tuple[int, float]]:
    return [(m["step"], m["reward_mean"]) for m in read_metrics(output_dir)]


def ledger(output_dir: Path) -> list[tuple[int, dict]]:
    """The sample ledger of a run: (step, {"epoch", "indices"}) per metrics line."""
    return [(m["step"], m["ledger"]) for m in read_metrics(output_dir)]


def actor_weights(step_dir: Path) -> dict[str, torch.Tensor]:
    """The model tensors of a checkpoint, read with torch's own DCP converter (as an outside tool would)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "full.pt"
        dcp_to_torch_save(str(step_dir / ACTOR_DIR), str(out))
        return torch.load(out, weights_only=True)[MODEL_KEY]


def final_weights(output_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return actor_weights(checkpoints_dir(output_dir) / step_dir_name(step))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"weights differ at {k}"


def checkpoints_dir(output_dir: Path) -> Path:
    return run_dir(output_dir) / CHECKPOINTS_DIR


def copy_run(src_output_dir: Path, dst_output_dir: Path) -> Path:
    """A copy of a finished run (checkpoints, metrics, events) to start another run from; returns its run dir."""
    dst_output_dir.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copytree(run_dir(src_output_dir), run_dir(dst_output_dir)))


def read_events(output_dir: Path) -> list[dict]:
    path = run_dir(output_dir) / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_rayrl_split(output_dir: Path, *overrides: str, timeout: float = 300, cmd: list[str] | None = None
                    ) -> subprocess.CompletedProcess:
    """Run the driver to completion with stdout and stderr kept apart (exit-2 checks read stderr alone)."""
    return subprocess.run(cmd or rayrl_cmd(output_dir, *overrides), cwd=REPO, env=shared_ray_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)


def rayrl_stderr_lines(stderr: str) -> list[str]:
    """rayrl's own stderr lines (Ray prints a start-up warning of its own there)."""
    return [line for line in stderr.splitlines() if line.startswith("rayrl:")]


# ---------------------------------------------------------------- recovery tests: processes, signals, events


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process (Ray actors show as ``ray::Class.method``)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        table[int(entry)] = (int(stat[stat.rfind(")") + 2:].split()[1]), cmd.strip())
    return table


def descendants(root_pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process below ``root_pid`` (a driver, a run_main.sh, a raylet):
    only this test's processes, never another run's on the same machine."""
    table = process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, stack = [], [root_pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append((child, table[child][1]))
            stack.append(child)
    return out


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def pid_busy_in(root_pid: int, title: str, timeout: float = 120) -> int:
    """The pid of a Ray actor below ``root_pid`` whose process title is ``title`` *now*: Ray titles an
    actor ``ray::Class.method`` while it runs that method, so ``ray::ActorWorker.train_step`` is a rank
    in the middle of a training step. Polls fast: some calls last only milliseconds."""
    cls = title.split(".")[0]
    deadline = time.monotonic() + timeout
    candidates: list[int] = []
    next_scan = 0.0
    while time.monotonic() < deadline:
        if time.monotonic() >= next_scan:  # the actors change after a recovery
            candidates = [pid for pid, cmd in descendants(root_pid) if cmd.split(" ")[0].startswith(cls)]
            next_scan = time.monotonic() + 1.0
        for pid in candidates:
            if _title(pid).startswith(title):
                return pid
        time.sleep(0.001)
    raise TimeoutError(f"no process titled {title!r} below pid {root_pid} within {timeout:.0f}s")


def events_named(output_dir: Path, name: str) -> list[dict]:
    try:
        return [e for e in read_events(output_dir) if e["event"] == name]
    except FileNotFoundError:
        return []


def last_step(output_dir: Path) -> int:
    try:
        return max((m["step"] for m in read_metrics(output_dir)), default=0)
    except FileNotFoundError:
        return 0


def wait_running(proc: subprocess.Popen, predicate, timeout: float, what: str):
    """wait_until, failing at once (with the run's output) if the run ends first."""
    def check():
        value = predicate()
        if not value and proc.poll() is not None:
            raise AssertionError(f"run ended (rc {proc.returncode}) before {what}:\n{output_of(proc)[-3000:]}")
        return value

    return wait_until(check, timeout, what, interval=0.02)


def session_processes(sid: int, title: str = "") -> list[int]:
    """Processes of session ``sid`` (a driver started by spawn_rayrl, its Ray and workers, orphans included)
    whose command line starts with ``title``."""
    out = []
    for pid, (_, cmd) in process_table().items():
        try:
            if os.getsid(pid) == sid and cmd.startswith(title):
                out.append(pid)
        except OSError:
            pass
    return out


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL every process of the driver's session, as losing the machine would, and reap the driver. The
    session, not the process group: Ray's workers each lead a group of their own, and left alive they run on
    for seconds (a coordinator among them can finish a step and save it); a killed driver's orphans stay in
    the session too."""
    for pid in session_processes(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass


def uninterrupted_run(tmp_path_factory, *overrides: str) -> Path:
    """One uninterrupted run per config for the whole session, every recovery test compares against it.
    Shared by the session's pytest-xdist processes (tests/run.sh): the first to ask makes it holding a
    RunLock on its directory in their common temp dir, the others wait for it and reuse it."""
    from rayrl.run_lock import RunLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # .../pytest-N/popen-gwK: the parent is the session's, shared by its processes
    out = root / f"uninterrupted-{hashlib.sha256(chr(0).join(overrides).encode()).hexdigest()[:12]}"
    out.mkdir(exist_ok=True)
    lock = RunLock(out)  # out/.rayrl.lock; the run itself locks its run dir, out/EXPERIMENT
    lock.acquire(wait_s=900)
    try:
        if not (out / ".done").exists():
            shutil.rmtree(run_dir(out), ignore_errors=True)  # a failed attempt's
            proc = run_rayrl(out, *overrides, timeout=600)
            assert proc.returncode == 0, proc.stdout[-3000:]
            (out / ".done").touch()
    finally:
        lock.release()
    return out


# The config every recovery test runs (and compares with one uninterrupted run of): 20 steps of ~0.15 s,
# a checkpoint every 4, so that kills land mid-run after a checkpoint and the run still has steps to go.
RECOVERY_STEPS = ("runner.max_steps=20", "runner.save_interval=4")

# The config of the resume tests: 6 steps, a checkpoint every 2; 16 prompts in batches of 4, so an epoch is
# 4 steps and the checkpoint of step 4 sits on the epoch boundary. With the reference: bit-exact resume
# covers the KL term.
RESUME_STEPS = ("runner.max_steps=6", "runner.save_interval=2", "data.num_samples=16", WITH_REFERENCE)


def recovery_times(output_dir: Path, killed_at: list[float] | None = None) -> list[str]:
    """One line per recovery: what died, the step resumed from, the seconds to the next finished step as
    the run measured them (from when it saw the failure) and, given the kill times, as the test saw them."""
    lines = []
    for i, e in enumerate(events_named(output_dir, "recovered")):
        seen = f", {e['time'] - killed_at[i]:.1f} s after the kill" if killed_at and i < len(killed_at) else ""
        lines.append(f"{e['what']}: resumed from step {e['resumed_from']}, step {e['step']} finished "
                     f"{e['seconds_to_next_step']:.1f} s after the failure{seen}")
    return lines
