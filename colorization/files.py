"""Writing files so that a crash never leaves half of one: the one atomic writer, JSON on top of it, and the
swap of a whole folder (an export) for a new one.

Standard library only, so that any layer (``reproduce`` too, which imports no torch) can use it."""

from __future__ import annotations

import json
import os
import shutil
import tempfile


def atomic_write(path: str, write) -> None:
    """Write through a temporary file in the same folder, so a crash never leaves half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_json(path: str, data) -> None:
    """Write ``data`` as indented JSON, atomically."""

    def write(temporary: str) -> None:
        with open(temporary, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")

    atomic_write(path, write)


def read_json_if_present(file: str):
    """The JSON in ``file``, or None when there is no such file."""
    if not os.path.isfile(file):
        return None
    with open(file) as handle:
        return json.load(handle)


def swap_in_folder(new: str, target: str, aside: str) -> None:
    """Put the complete folder ``new`` at ``target`` in place of the folder there. The old one is renamed to
    ``aside`` first and deleted only once the new one is in place, so a kill at any moment leaves a whole folder
    at ``target``, or the old one whole at ``aside`` (which :func:`recover_folder` puts back), never neither."""
    recover_folder(target, aside)
    if os.path.isdir(target):
        os.replace(target, aside)
    os.replace(new, target)
    shutil.rmtree(aside, ignore_errors=True)


def recover_folder(target: str, aside: str) -> bool:
    """Finish a :func:`swap_in_folder` that a kill interrupted -> whether the old folder was put back at ``target``.

    Only the old folder left (killed between the two renames): it goes back to ``target``. Both left (killed
    while the old one was deleted): ``target`` is the whole new one, and what is left of the old one goes."""
    if not os.path.isdir(aside):
        return False
    if os.path.lexists(target):
        shutil.rmtree(aside)
        return False
    os.replace(aside, target)
    return True
