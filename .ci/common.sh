# Shared by .ci/setup and .ci/run (sourced, not executed).
# Sets REPO, VENV, and defines find_comfyui.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${UNHYPE_VENV:-$HOME/.cache/unhype/venv}"

is_comfyui() { [ -f "$1/main.py" ] && [ -f "$1/comfy/cli_args.py" ]; }

# find_comfyui: prints the checkout's absolute path and returns 0, or prints the reason and
# returns 1. Order: $COMFYUI_PATH, ~/.cache/comfyui/ComfyUI, ../ComfyUI (next to the repo),
# ../.. when the repo sits in ComfyUI/custom_nodes/. Keep in sync with tests/comfy_host.py.
find_comfyui() {
    local tried="" c
    local parent
    parent="$(basename "$(dirname "$REPO")")"
    for c in "${COMFYUI_PATH:-}" "$HOME/.cache/comfyui/ComfyUI" "$REPO/../ComfyUI" \
        "$([ "$parent" = custom_nodes ] && echo "$REPO/../..")"; do
        [ -n "$c" ] || continue
        if is_comfyui "$c"; then
            (cd "$c" && pwd)
            return 0
        fi
        tried="$tried${tried:+, }$c"
    done
    echo "no ComfyUI checkout (set COMFYUI_PATH or put one at ~/.cache/comfyui/ComfyUI; tried $tried)"
    return 1
}
