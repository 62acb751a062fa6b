#!/usr/bin/env bash
# The GPU smoke suite (tests/gpu/smoke.py): rayrl's worker classes on one device, without Ray.
#
#   bash tests/gpu/run.sh                # on CUDA when available, else CPU
#   bash tests/gpu/run.sh --device cpu   # what tests/test_gpu_smoke.py runs in the main suite
#
# Uses the python on PATH (PYTHON overrides). Pure-Python wheels in tests/gpu/wheels (bash
# scripts/gpu_wheels.sh fetches them: omegaconf, for a machine that has torch and transformers but not
# rayrl's other dependencies) go on PYTHONPATH as they are: Python imports such wheels without installing.
# Prints one line per check and a summary line "N passed, M failed, K not applicable"; exit status 0 only
# when no check failed. Bounded at 8 minutes.
set -uo pipefail
root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)
py=${PYTHON:-python3}
path=$root
for wheel in "$root"/tests/gpu/wheels/*.whl; do
    [[ -e $wheel ]] && path="$path:$wheel"
done
export PYTHONPATH="$path${PYTHONPATH:+:$PYTHONPATH}"
out=$(mktemp -t rayrl-gpu-smoke.XXXXXX)
timeout --kill-after=10 480 "$py" "$root/tests/gpu/smoke.py" "$@" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
[[ $rc == 124 || $rc == 137 ]] && echo "tests/gpu/run.sh: stopped after 8 minutes" >&2
# A crash (a segfault, a CUDA abort) or the time limit ends smoke.py before its summary: say so in the same form.
if ! grep -Eq '^[0-9]+ passed, [0-9]+ failed' "$out"; then
    echo "0 passed, 1 failed, 0 not applicable (smoke.py exited with status $rc before its summary)"
    ((rc != 0)) || rc=1
fi
rm -f "$out"
exit $rc
