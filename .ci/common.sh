# Shared by .ci/setup and .ci/run (sourced, not executed).
# Sets REPO and VENV; `discover` asks unhype/discovery.py (the one implementation of where ComfyUI
# is, shared with the tests and the headless trainer) with the venv's Python.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${UNHYPE_VENV:-$HOME/.cache/unhype/venv}"

discover() { (cd "$REPO" && "$VENV/bin/python" -m unhype.discovery "$@"); }

# The Python that tests against ComfyUI $1 (a version): the venv for the first host of
# `discover --hosts`, an overlay venv with that host's own requirements for the others.
overlay_venv() { echo "$VENV-comfyui-$1"; }
