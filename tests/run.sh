#!/usr/bin/env bash
# Run the test suite: set up the environment with the `test` extra, then pytest.
# Arguments go to pytest (e.g. tests/test_config.py -k resume); without paths it runs testpaths (tests/).
# Exit status is pytest's, except "no tests collected" (5), which is a failure here (1).
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
rayrl_setup_env test

rc=0
python -m pytest "$@" || rc=$?
if ((rc == 5)); then
    echo "rayrl: pytest collected no tests; failing" >&2
    exit 1
fi
exit "$rc"
