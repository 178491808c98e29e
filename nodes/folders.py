"""The pack's model folders in ComfyUI, and the Trainer's resume choice.

models/unhype (networks, listed by the Loader), models/unhype_checkpoints (the Trainer's
resumable checkpoints, which the Loader does not list) and models/clip_judge (CLIP weights for
the Erasure Check). Each keeps the folders an extra_model_paths.yaml entry registered before the
pack loaded.
"""

import os

import folder_paths
from safetensors import safe_open

from ..unhype.files import EXTENSION
from ..unhype.settings import ConfigError
from ..unhype.training import CHECKPOINT_KIND

NETWORKS = "unhype"
CHECKPOINTS = "unhype_checkpoints"
CLIP_JUDGE = "clip_judge"


def register_folder(kind: str) -> None:
    """models/<kind> first, then the folders already registered; .safetensors files listed.

    add_model_folder_path (extra_model_paths.yaml) creates an entry with an empty extension
    set, which means "every file": ours then lists .safetensors only."""
    default = os.path.join(folder_paths.models_dir, kind)
    paths, extensions = folder_paths.folder_names_and_paths.get(kind, ([], set()))
    paths = list(paths)
    if default not in paths:
        paths.insert(0, default)
    folder_paths.folder_names_and_paths[kind] = (
        paths, set(extensions) | {EXTENSION} if extensions else {EXTENSION})


for _kind in (NETWORKS, CHECKPOINTS, CLIP_JUDGE):
    register_folder(_kind)


def first_folder(kind: str) -> str:
    """Where the pack writes files of this kind."""
    return folder_paths.get_folder_paths(kind)[0]


def checkpoint_names() -> list[str]:
    return sorted(folder_paths.get_filename_list(CHECKPOINTS))


def resolve_resume(resume: str) -> str | None:
    """A checkpoint name from the unhype_checkpoints folders, or a path; None for no resume.

    A missing or non-checkpoint file is a ConfigError that says where it looked."""
    resume = (resume or "").strip()
    if not resume or resume.lower() == "none":
        return None
    path = folder_paths.get_full_path(CHECKPOINTS, resume)
    if path is None and os.path.isfile(os.path.expanduser(resume)):
        path = os.path.expanduser(resume)
    if path is None:
        folders = ", ".join(folder_paths.get_folder_paths(CHECKPOINTS))
        raise ConfigError(f"resume: checkpoint {resume!r} not found (looked in {folders})")
    try:
        with safe_open(path, framework="pt") as handle:
            kind = (handle.metadata() or {}).get("format")
    except Exception as error:
        raise ConfigError(f"resume: {path} is not a readable .safetensors file ({error})") from None
    if kind != CHECKPOINT_KIND:
        raise ConfigError(
            f"resume: {os.path.basename(path)} is not an UnHype training checkpoint (an UnHype "
            "network or another model file?): pick a file the Trainer wrote to "
            "models/unhype_checkpoints")
    return path
