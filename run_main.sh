#!/usr/bin/env bash
# Launch a rayrl job: set up the environment, run the driver (python -m rayrl.main), and relaunch it if it
# dies abnormally (e.g. the head node's driver process was killed), resuming from the run's checkpoints.
#
#   bash run_main.sh [--config PATH] [key=value ...]   (default --config configs/grpo_tiny.yaml)
#
# Paths are relative to the repository root (this script's directory), where it runs.
# Exit status: the driver's. 0 (done), 2 (bad config or usage), 3 (a program error: relaunching would only
# repeat it) and 130 (interrupted by the user) are final; any other status, a death by a signal included, is
# relaunched with runner.resume_mode=auto, at most $RAYRL_MAX_JOB_RESTARTS times (default 3). SIGINT/SIGTERM
# sent to this script are a stop the user (or a scheduler) asked for: forwarded to the driver, waited for,
# never relaunched. On SIGTERM the driver checkpoints at the next step boundary and exits 75, and so does
# this script: the same command later resumes from that step.
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")"
source scripts/setup_env.sh
rayrl_setup_env plot  # the plot extra (matplotlib): the README's `python -m rayrl.plot` works after a run

max_relaunches=${RAYRL_MAX_JOB_RESTARTS:-3}
if [[ ! $max_relaunches =~ ^[0-9]+$ ]]; then
    echo "rayrl: RAYRL_MAX_JOB_RESTARTS must be a non-negative integer (got '$max_relaunches')" >&2
    exit 2
fi

args=("$@")
has_config=0
for arg in "$@"; do
    case $arg in --config | --config=*) has_config=1 ;; esac
done
((has_config)) || args=(--config configs/grpo_tiny.yaml "${args[@]}")

child=""  # pid of the running driver
stop=""   # the signal of a stop the user asked for
on_stop() {
    stop=$1
    if [[ -n $child ]]; then kill -s "$1" "$child" 2>/dev/null || true; fi
}
trap 'on_stop INT' INT
trap 'on_stop TERM' TERM

relaunches=0
extra=()
while :; do
    # Job control gives the driver its own process group, and with it a default SIGINT handler (background
    # jobs of a non-interactive shell ignore SIGINT otherwise); a terminal's Ctrl-C then reaches the
    # driver once, through on_stop, instead of twice.
    set -m
    python -m rayrl.main "${args[@]}" "${extra[@]}" &
    child=$!
    set +m
    if [[ -n $stop ]]; then kill -s "$stop" "$child" 2>/dev/null || true; fi  # came before child was set
    while :; do
        rc=0
        wait "$child" || rc=$?
        # `wait` also returns when a trapped signal arrives; the driver may still be running then.
        kill -0 "$child" 2>/dev/null || break
    done
    # A driver killed outright leaves some of its local Ray instance's daemons behind in its process group
    # (job control made the driver the group leader); they would outlive the job. An empty group: no-op.
    died_at=$(date +%s.%N)
    kill -KILL -- "-$child" 2>/dev/null || true
    child=""
    case $rc in 0 | 2 | 3 | 130) exit "$rc" ;; esac  # done, bad config, program error, interrupted
    if [[ -n $stop ]] || ((relaunches >= max_relaunches)); then exit "$rc"; fi
    relaunches=$((relaunches + 1))
    echo "rayrl: driver exited with $rc; relaunching ($relaunches/$max_relaunches)" \
        "with runner.resume_mode=auto" >&2
    extra=(runner.resume_mode=auto)
    # The relaunched driver reports the loss in events.jsonl and times the recovery from this moment.
    export RAYRL_RELAUNCH=$relaunches RAYRL_RELAUNCH_MAX=$max_relaunches RAYRL_RELAUNCH_EXIT=$rc \
        RAYRL_RELAUNCH_TIME=$died_at
done
