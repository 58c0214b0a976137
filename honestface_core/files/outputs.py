"""Where the command line writes: output folders and report files, checked before any slow work.

Rules (docs/restore.md, "Bad input and limits"): an output path is resolved once; its nearest existing folder must
be a writable folder (checked with ``os.access`` before any model loads); new files are created with
``O_CREAT | O_EXCL | O_NOFOLLOW``, so an existing file or a symlink (dangling or not) is never written through or
replaced; an existing report is replaced only when the user asked for it, and never through a symlink.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from honestface_core.errors import HonestFaceError

_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)


def _bad_path(what: str, err: Exception) -> HonestFaceError:
    return HonestFaceError(what, f"is not a usable path ({err})", "Choose a valid, shorter path")


def _check_writable_folder(folder: Path, what: str) -> None:
    """``folder`` or, when it does not exist yet, its nearest existing ancestor must be a writable folder."""
    probe = folder
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise HonestFaceError(what, f"cannot be created: '{probe}' is a file, not a folder",
                              "Choose a path whose folders are folders (or move that file away)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise HonestFaceError(what, f"cannot be written: the folder '{probe}' is read-only for this user",
                              "Choose a folder you can write to")


def prepare_output_dir(path: str | os.PathLike, what: str) -> Path:
    """Resolve the output folder once, check that it is (or can be created as) a writable folder, create it.

    Raises:
        HonestFaceError: ``path`` is a file or a dangling symlink, a parent is a file, or the folder is read-only.
    """
    what = f"{what} '{path}'"
    try:
        raw = Path(os.path.abspath(os.fspath(path)))
        if os.path.lexists(raw) and not raw.exists():
            raise HonestFaceError(what, "is a symbolic link to nothing (dangling)", "Give a real folder")
        folder = raw.resolve()
        if folder.exists() and not folder.is_dir():
            raise HonestFaceError(what, "is a file, not a folder", "Give a folder (it is created if missing)")
        _check_writable_folder(folder, what)
        folder.mkdir(parents=True, exist_ok=True)
    except HonestFaceError:
        raise
    except (ValueError, RuntimeError) as err:  # null byte, symlink loop
        raise _bad_path(what, err) from err
    except OSError as err:
        raise HonestFaceError(what, f"cannot be created ({err.strerror or err})", "Choose a folder you can write to") from err
    return folder


def check_new_file(path: str | os.PathLike, what: str, overwrite: bool = False, overwrite_option: str = "") -> Path:
    """Check, before the slow work, that a report file can be written at ``path``; return its absolute path (folder
    resolved, the file name itself not followed).

    An existing file is refused unless ``overwrite`` (``overwrite_option`` names the flag that allows it, for the
    message); a symlink or a folder at ``path`` is always refused. The folder is created by :func:`write_file`.
    """
    what = f"{what} '{path}'"
    try:
        raw = Path(os.path.abspath(os.fspath(path)))
        target = raw.parent.resolve() / raw.name
        if target.is_symlink():
            raise HonestFaceError(what, "is a symbolic link, which is never written through", "Give the real file name")
        if target.is_dir():
            raise HonestFaceError(what, "is a folder", "Give a file name")
        if target.exists() and not overwrite:
            raise HonestFaceError(what, "already exists and is not overwritten", "Choose another file name or delete "
                                  "the old file" + (f" (or pass {overwrite_option})" if overwrite_option else ""))
        _check_writable_folder(target.parent, what)
    except HonestFaceError:
        raise
    except (OSError, ValueError, RuntimeError) as err:  # name too long, null byte, symlink loop
        raise _bad_path(what, err) from err
    return target


def create_new_file(path: Path, data: bytes) -> None:
    """Create ``path`` and write ``data``; ``FileExistsError`` if anything (a file, a symlink) is already there."""
    fd = os.open(path, _NEW_FILE_FLAGS, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        os.unlink(path)
        raise


def _replace_file(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically: a temporary file in the same folder, then ``os.replace`` (renames over the
    name; never follows a link)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))  # keep the old file's permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def write_file(path: str | os.PathLike, data: bytes, what: str, overwrite: bool = False,
               overwrite_option: str = "") -> Path:
    """Write ``data`` to a report path, checked as by :func:`check_new_file` (again: files may have appeared while
    the command ran); with ``overwrite`` an existing regular file is replaced atomically."""
    target = check_new_file(path, what, overwrite, overwrite_option)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if overwrite and target.exists():
            _replace_file(target, data)
        else:
            create_new_file(target, data)
    except FileExistsError as err:
        raise HonestFaceError(f"{what} '{path}'", "appeared while the command ran and is not overwritten",
                              "Run again with another file name") from err
    except OSError as err:
        raise HonestFaceError(f"{what} '{path}'", f"cannot be written ({err.strerror or err})",
                              "Check the disk space and the folder's permissions") from err
    return target


def write_unique_file(folder: Path, stem: str, suffix: str, data: bytes) -> Path:
    """Create ``folder/<stem><suffix>``, else the first free ``<stem>_N<suffix>``; never replaces or follows
    anything already there (a file, a symlink, a dangling symlink)."""
    n = 0
    while True:
        path = folder / f"{stem}{'' if n == 0 else f'_{n}'}{suffix}"
        n += 1
        if os.path.lexists(path):
            continue
        try:
            create_new_file(path, data)
            return path
        except FileExistsError:  # created in the meantime: take the next name
            continue
        except OSError as err:
            raise HonestFaceError(f"output file '{path}'", f"cannot be written ({err.strerror or err})",
                                  "Check the disk space and the output folder's permissions") from err


__all__ = ["prepare_output_dir", "check_new_file", "create_new_file", "write_file", "write_unique_file"]
