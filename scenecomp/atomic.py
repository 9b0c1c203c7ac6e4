"""Files and folders that appear whole or not at all, safe with several writers.

Temporary names are unique (``tempfile``) and sit beside the target, so the final
rename never crosses filesystems, and two processes (or two nodes on a shared
filesystem) writing the same target never share a temporary file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

# mkstemp makes its files owner-only (0600); a finished file gets the mode open() would give it
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomically(path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` to a unique temporary file beside ``path``, then rename it onto ``path``:
    readers see the old file or the new one, never half of one. Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def build_folder_once(folder, build: Callable[[Path], object], complete: Callable[[Path], bool]) -> bool:
    """Make ``folder`` with ``build(tmp)`` unless it is already ``complete``; returns True if this call built it.

    For data every process of a launch needs (all DDP ranks, on every node): a lock
    beside the folder lets one process build while the others wait, and the
    build goes to a unique temporary sibling folder renamed into place at once,
    so a folder under the final name is always complete, even where the lock
    does not hold (some network filesystems): then the loser's copy is dropped.
    """
    from filelock import FileLock

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / f".{folder.name}.lock")):
        if complete(folder):
            return False
        if folder.exists() and any(folder.iterdir()):
            raise FileExistsError(f"{folder} exists but is incomplete; remove it to have it made again")
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
        try:
            build(tmp)
            try:
                os.replace(tmp, folder)  # atomic; replaces at most an empty folder
            except OSError:
                if not complete(folder):
                    raise
                return False  # another process finished first (no working lock here)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return True


@contextmanager
def new_folder(out, overwrite: bool = False):
    """Write a folder (a data set) as a whole: yields a unique temporary sibling of ``out``
    that is renamed to ``out`` when the block ends without an error (and removed when it
    fails), so a crash never leaves two data sets mixed or one half written.

    A non-empty ``out`` is refused (`FileExistsError`) unless ``overwrite``; then the old
    folder is moved aside, the new one renamed into place and the old one deleted (a
    crash between the two renames leaves the old folder whole beside it, as ``.NAME.*.old``).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a folder")
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise FileExistsError(
            f"{out}: folder is not empty; choose another --out, or --overwrite to replace it "
            "(its whole content) with the new data set"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    old = tmp.with_suffix(".old")
    try:
        yield tmp
        if overwrite and out.exists():
            os.rename(out, old)
        try:
            os.rename(tmp, out)  # also refuses a folder that another writer filled meanwhile
        except OSError:
            if old.exists():
                os.rename(old, out)  # put the old data set back
            raise FileExistsError(
                f"{out}: could not be replaced (another process wrote there?); nothing was changed"
            ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
