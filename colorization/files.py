"""Writing files so that a crash never leaves half of one: the one atomic writer, and JSON on top of it.

Standard library only, so that any layer (``reproduce`` too, which imports no torch) can use it."""

from __future__ import annotations

import json
import os
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
