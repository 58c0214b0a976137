"""User-facing errors: every one names the input, what was wrong and what to do."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path


class HonestFaceError(ValueError):
    """An error caused by the user's input or setup, with an actionable message.

    Args:
        what_input: which input or file was wrong (e.g. ``"image 2 of 'references'"``).
        problem: what was wrong with it.
        fix: what the user should do about it.
    """

    def __init__(self, what_input: str, problem: str, fix: str):
        self.what_input = what_input
        self.problem = problem
        self.fix = fix
        super().__init__(f"{what_input}: {problem}. {fix}")

    def __str__(self) -> str:  # OSError's __str__ would win in MissingModelError's MRO
        return str(self.args[0])


class MissingModelError(HonestFaceError, FileNotFoundError):
    """A model file or folder is missing. Names the exact file and the folder where it belongs."""

    def __init__(self, filename: str, folder: str | Path, where_to_get: str = ""):
        self.filename = filename
        self.folder = str(folder)
        fix = f"Put '{filename}' in '{self.folder}'"
        if where_to_get:
            fix += f" ({where_to_get})"
        fix += ". Nothing is downloaded automatically; run `honestface check` to list every model file."
        super().__init__(f"model file '{filename}'", f"not found in '{self.folder}'", fix)


def exit_code(command: Callable[[], object]) -> int:
    """Run a command-line body: its exit code when it returns an int (else 0), or 2 with the error on stderr for a
    :class:`HonestFaceError` (no traceback for a user's mistake)."""
    try:
        result = command()
        return result if isinstance(result, int) else 0
    except HonestFaceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

