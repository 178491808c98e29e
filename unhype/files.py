"""The files the pack writes: safe names, never-overwritten paths, and one atomic write.

Networks, training checkpoints and baked LoRAs are all written by `save_atomically`, model cards
by `write_text_atomically`, so a crash, a full disk or a cancel mid-write never leaves a half
file, nor a stray temporary one, and the file that was there before stays intact.
"""

import contextlib
import os
import re
import sys
import unicodedata

EXTENSION = ".safetensors"
PARTIAL = ".partial-write"  # suffix of a file while it is written, in the same folder
_RESERVED = {"con", "prn", "aux", "nul",  # Windows device names, also with any extension
             *(f"{port}{n}" for port in ("com", "lpt") for n in "0123456789\u00b9\u00b2\u00b3")}


def sanitise_name(name: str) -> str:
    """A file stem that stays inside its folder and that common file systems accept.

    Keeps letters, marks and digits of any script (in NFC, so the name reads back as typed),
    '_', '-' and '.'; every run of anything else (separators, spaces, symbols, control or
    invisible characters, and what the file-system encoding cannot store) becomes one '_'.
    Drops a .safetensors suffix, collapses dot runs, trims to 100 characters and 200 encoded
    bytes (file names stop at 255 bytes; room for '_2' and suffixes), puts '_' before a Windows
    device name; an empty result becomes 'unhype'.
    """
    encoding = sys.getfilesystemencoding()

    def kept(char: str) -> bool:
        if char in "_.-":
            return True
        if unicodedata.category(char)[0] not in "LMN":
            return False
        try:
            char.encode(encoding)
        except UnicodeEncodeError:
            return False
        return True

    stem = unicodedata.normalize("NFC", str(name)).strip()
    if stem.lower().endswith(EXTENSION):
        stem = stem[: -len(EXTENSION)]
    stem = re.sub(r"/+", "_", "".join(c if kept(c) else "/" for c in stem))
    stem = re.sub(r"\.{2,}", ".", stem)
    stem = stem.strip("._-")[:100]
    while len(stem.encode(encoding)) > 200:
        stem = stem[:-1]
    stem = stem.strip("._-")
    if not stem:
        stem = "unhype"
    if stem.split(".")[0].lower() in _RESERVED:
        stem = "_" + stem
    return stem


def unique_path(folder: str, stem: str) -> str:
    """folder/stem.safetensors, or stem_2, stem_3, ... when taken: nothing is overwritten."""
    os.makedirs(folder, exist_ok=True)
    candidate, number = stem, 1
    while os.path.exists(os.path.join(folder, candidate + EXTENSION)) or os.path.exists(
            os.path.join(folder, candidate + EXTENSION + PARTIAL)):
        number += 1
        candidate = f"{stem}_{number}"
    return os.path.join(folder, candidate + EXTENSION)


class FileWriteError(OSError):
    """A file the pack could not write (a full disk, no permission, a read-only folder): the
    message names the file and the reason."""

    def __str__(self) -> str:
        return self.strerror


_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how safetensors reports an I/O failure


def save_file(tensors: dict, filename: str, metadata: dict[str, str]) -> None:
    """safetensors' save_file, imported when first used: the command line checks its folders
    through this module without loading torch."""
    from safetensors.torch import save_file as write

    write(tensors, filename, metadata=metadata)


def _write_atomically(path: str, write) -> None:
    """`write(temporary)`, then the temporary file flushed to disk and renamed over `path` (atomic
    on one file system). On any failure the temporary file is removed and whatever was at `path`
    before is left as it was; a failure of the disk or the folder is a `FileWriteError` naming
    `path`."""
    temporary = path + PARTIAL
    try:
        try:
            write(temporary)
            with open(temporary, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except OSError as error:
            raise FileWriteError(error.errno, f"cannot write {path}: {error.strerror}") from None
        except Exception as error:
            number = _OS_ERROR.search(str(error))
            if number is None:
                raise
            code = int(number.group(1))
            raise FileWriteError(code, f"cannot write {path}: {os.strerror(code)}") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def save_atomically(path: str, tensors: dict, metadata: dict[str, str]) -> None:
    """Write a .safetensors file atomically (`_write_atomically`)."""
    _write_atomically(path, lambda temporary: save_file(tensors, temporary, metadata=metadata))


def write_text_atomically(path: str, text: str) -> None:
    """Write a UTF-8 text file (a model card) atomically, like the tensors beside it."""
    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)

    _write_atomically(path, write)


def beside(path: str, suffix: str) -> str:
    """The file next to a network, e.g. its card: net.safetensors -> net.md."""
    stem = path[: -len(EXTENSION)] if path.endswith(EXTENSION) else path
    return stem + suffix


def cannot_write(folder: str) -> str | None:
    """Why no file can be written in `folder` (made if missing), or None when one can."""
    probe = os.path.join(folder, ".unhype-write-test")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        return error.strerror or str(error)
    return None
