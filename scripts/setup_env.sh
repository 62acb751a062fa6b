# Shared environment set-up for run_main.sh and tests/run.sh.
# Source this file, then call `rayrl_setup_env [EXTRAS]` (EXTRAS: comma-separated, e.g. "test").
#
# - Uses the active virtualenv ($VIRTUAL_ENV); else creates .venv in the repository root (python3.11 if
#   present, else python3, which must be >= 3.11) and activates it.
# - Installs torch==2.13.0 FIRST when torch is missing: the CPU wheel lies on this machine's disk, while a
#   bare `torch` resolved by pip would be a multi-GB CUDA build. Not with the `vllm` extra (the GPU
#   install): the official vLLM wheel pins the CUDA torch it was built against, and pip installs that.
# - Runs `pip install -e .[EXTRAS]` only when pyproject.toml (or this checkout's path) changed since the
#   last install, or EXTRAS asks for extras not yet installed; a stamp file in the venv remembers both.
# - RAYRL_SKIP_SETUP=1 installs nothing (an existing .venv is still activated when no venv is active).

rayrl_setup_env() {
    local extras=${1:-}
    local root
    root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)

    if [[ -z ${VIRTUAL_ENV:-} ]]; then
        if [[ ! -x $root/.venv/bin/python ]]; then
            [[ ${RAYRL_SKIP_SETUP:-0} == 1 ]] && return 0
            _rayrl_create_venv "$root/.venv" || return 1
        fi
        export VIRTUAL_ENV=$root/.venv
    fi
    if [[ ! -x $VIRTUAL_ENV/bin/python ]]; then
        echo "rayrl: VIRTUAL_ENV=$VIRTUAL_ENV has no bin/python" >&2
        return 1
    fi
    export PATH="$VIRTUAL_ENV/bin:$PATH"  # what `activate` does, also when only VIRTUAL_ENV was exported
    unset PYTHONHOME
    [[ ${RAYRL_SKIP_SETUP:-0} == 1 ]] && return 0

    _rayrl_check_python python || return 1
    if [[ ",$extras," != *",vllm,"* ]] \
        && ! python -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)'; then
        echo "rayrl: setting up $VIRTUAL_ENV: pip install torch==2.13.0 ..." >&2
        python -m pip install -qq torch==2.13.0 || { echo "rayrl: set-up failed (torch)" >&2; return 1; }
    fi

    local stamp=$VIRTUAL_ENV/.rayrl-setup-stamp
    local want have_hash="" have_extras="" wanted
    want=$({ echo "$root"; cat "$root/pyproject.toml"; } | sha256sum | cut -d' ' -f1)
    if [[ -f $stamp ]]; then
        { read -r have_hash; read -r have_extras; } <"$stamp" || true
    fi
    if [[ $have_hash != "$want" ]]; then
        have_extras=""  # pyproject.toml changed: install afresh with what is asked for now
    fi
    wanted=$(_rayrl_union "$have_extras" "$extras")
    if [[ $have_hash == "$want" && $wanted == "$have_extras" ]]; then
        return 0
    fi
    echo "rayrl: setting up $VIRTUAL_ENV: pip install -e .${wanted:+[$wanted]} ..." >&2
    if ! python -m pip install -qq -e "$root${wanted:+[$wanted]}"; then
        echo "rayrl: set-up failed (pip install -e)" >&2
        return 1
    fi
    printf '%s\n%s\n' "$want" "$wanted" >"$stamp"
}

_rayrl_create_venv() {
    local py
    py=$(command -v python3.11 || command -v python3 || true)
    if [[ -z $py ]]; then
        echo "rayrl: no python3 found; Python >= 3.11 is needed" >&2
        return 1
    fi
    _rayrl_check_python "$py" || return 1
    echo "rayrl: setting up: creating $1 with $py ..." >&2
    "$py" -m venv "$1" || { echo "rayrl: set-up failed (python -m venv)" >&2; return 1; }
}

_rayrl_check_python() {
    if ! "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        local version
        version=$("$1" -c 'import platform; print(platform.python_version())')
        echo "rayrl: Python >= 3.11 is needed; $1 is $version" >&2
        return 1
    fi
}

# The comma-separated union of two comma-separated lists, in order of first appearance.
_rayrl_union() {
    local out="" item
    local IFS=,
    for item in $1 $2; do
        [[ -n $item && ",$out," != *",$item,"* ]] && out=${out:+$out,}$item
    done
    echo "$out"
}
