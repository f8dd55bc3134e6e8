"""User-facing failures: one clear message and a non-zero exit instead of a traceback."""

from __future__ import annotations

import functools
import sys


class ColorizationError(Exception):
    """An error the user can fix (bad path, offline download, wrong checkpoint, diverged run...).

    Entry points catch it and print only its message; anything else is a bug and keeps its traceback.
    """

    reported = False  # True once the message has been printed where it was raised (several processes)


def cli_entry_point(main):
    """Wrap a command-line ``main`` so that known failures exit with one line instead of a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except ColorizationError as error:
            if not error.reported:
                print(f"error: {error}", file=sys.stderr, flush=True)
            sys.exit(1)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr, flush=True)
            sys.exit(130)

    return wrapper
