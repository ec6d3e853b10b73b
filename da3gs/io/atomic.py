"""Atomic outputs: write to a temporary name in the same folder, rename on success.

A reader never sees a half-written file: the final name appears only once the
writer has finished (``os.replace`` is atomic on POSIX and Windows for files on
the same file system, which is why the temporary name lives in the same folder).
On any exception (including ``KeyboardInterrupt``) the temporary is removed and
the original destination, if any, is left untouched.

Temporary names are hidden (``.name.tmp-<8 hex digits>.ext``) and keep the final
suffix, so writers that pick a format from the extension (imageio, Pillow) work.
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["atomic_path", "atomic_dir", "replace_dir", "remove_path"]


def _temp_sibling(path: Path, kind: str) -> Path:
    return path.parent / f".{path.name}.{kind}-{uuid.uuid4().hex[:8]}{path.suffix}"


def remove_path(p: Path) -> None:
    """Delete a file, link or folder tree; errors ignored (cleanup of our own temporaries)."""
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists() or p.is_symlink():
            p.unlink()
    except OSError:
        pass


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; rename it to ``path`` on success.

    The parent folder is created if needed. The body must create the temporary
    file; if it raises, the temporary is deleted and ``path`` is not touched.

    Example::

        with atomic_path("out/scene.ply") as tmp:
            ply.write(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path, "tmp")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{path}: the writer did not create its temporary file {tmp.name}")
        os.replace(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise


@contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``path``; move it to ``path`` on success.

    An existing ``path`` (file or folder) is replaced as a whole: it is first
    renamed aside, the new folder renamed into place, then the old one deleted.
    The two renames are not a single atomic step, but at every instant ``path``
    is either absent, the complete old folder or the complete new one. On error
    the temporary folder is deleted and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path, "tmp")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        remove_path(tmp)
        raise
    replace_dir(tmp, path)


def replace_dir(tmp: Path, path: Path, old: Path | None = None) -> None:
    """Move the finished folder ``tmp`` to ``path``, replacing whatever is there.

    The existing ``path`` is first renamed to ``old`` (default: a hidden sibling), ``tmp`` renamed
    into place, then ``old`` deleted; on failure ``path`` is restored and ``tmp`` deleted.
    """
    had_old = path.exists() or path.is_symlink()
    if had_old:
        old = old or _temp_sibling(path, "old")
    try:
        if had_old:
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        if had_old and old.exists() and not path.exists():
            os.replace(old, path)
            had_old = False
        remove_path(tmp)
        raise
    finally:
        if had_old:
            remove_path(old)
