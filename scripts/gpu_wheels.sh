#!/usr/bin/env bash
# Fetch the pure-Python wheels tests/gpu/run.sh needs on a GPU machine without network or Ray (Python 3.12,
# torch, transformers, safetensors and PyYAML present): omegaconf. They land in tests/gpu/wheels
# (git-ignored), which travels with the working tree; run.sh puts them on PYTHONPATH.
set -euo pipefail
root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
py=${PYTHON:-python3}
dest=$root/tests/gpu/wheels
mkdir -p "$dest"
version=$("$py" -c 'import omegaconf; print(omegaconf.__version__)')
"$py" -m pip download --quiet --no-deps --only-binary=:all: --implementation py --platform any \
    --python-version 3.12 --dest "$dest" "omegaconf==$version"
ls -l "$dest"
