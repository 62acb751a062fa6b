#!/usr/bin/env bash
# Create (or refresh) .venv-trl in the repository root: TRL (Hugging Face's GRPOTrainer) for
# benchmarks/vs_trl.py, which runs the same GRPO work in rayrl and in TRL and compares them.
#
#   bash scripts/setup_trl_env.sh      exit 0: ready; 77: impossible here (the reason is printed); 1: failed
#
# Why its own venv: TRL is no dependency of rayrl (not even an optional one: the benchmark is its only user),
# and it brings accelerate, datasets and their pins, which must not move the main .venv. torch==2.13.0 first
# (the CPU build, as in the main .venv; a bare torch resolved by pip would be a multi-GB CUDA build), then
# trl. rayrl is not installed there: the TRL side of the benchmark imports only the pure reward module
# (rayrl.data.rewards) from the checkout, through PYTHONPATH. Idempotent: a stamp records this script.
set -uo pipefail
root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
venv=${RAYRL_TRL_VENV:-$root/.venv-trl}
TRL_VERSION=1.16.0
SKIP=77

skip() { echo "rayrl: TRL environment skipped: $*" >&2; exit "$SKIP"; }
fail() { echo "rayrl: TRL environment set-up failed: $*" >&2; exit 1; }

py=$(command -v python3.11 || command -v python3 || true)
[[ -n $py ]] || skip "no python3 found"
stamp=$venv/.rayrl-trl-stamp
want=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)
if [[ -x $venv/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]]; then
    exit 0
fi
if [[ ! -x $venv/bin/python ]]; then
    echo "rayrl: creating $venv with $py ..." >&2
    "$py" -m venv "$venv" || fail "python -m venv"
fi
pip=("$venv/bin/python" -m pip install -qq)
echo "rayrl: setting up $venv: torch==2.13.0, trl==$TRL_VERSION (a few minutes) ..." >&2
"${pip[@]}" torch==2.13.0 || fail "pip install torch==2.13.0"
if ! "${pip[@]}" "trl==$TRL_VERSION"; then
    "$venv/bin/python" -m pip index versions trl >/dev/null 2>&1 || skip "PyPI is not reachable to install trl"
    fail "pip install trl==$TRL_VERSION"
fi
"$venv/bin/python" -c 'import torch, trl, transformers' || fail "the venv does not import trl"
echo "$want" > "$stamp"
