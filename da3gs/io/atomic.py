"""Atomic outputs: write to a temporary name in the same folder, rename on success.

A reader never sees a half-written file: the final name appears only once the
writer has finished (``os.replace`` is atomic on POSIX and Windows for files on
the same file system, which is why the temporary name lives in the same folder).
On any exception (including ``KeyboardInterrupt``) the temporary is removed and
the original destination, if any, is left untouched.

Temporary names are hidden (``.name.tmp-<8 hex digits>.ext``) and keep the final
suffix, so writers that pick a format from the extension (imageio, Pillow) work. A name too
long for that (the file system allows :data:`NAME_MAX` bytes) gets a short hashed temporary
instead (``.da3gs-<12 hex>.tmp-<8 hex>.ext``): every valid final name can be written.

Files come out with the permissions of the user's umask (``0644`` typically), as a plain
``open()`` would give them: some writers (``safetensors``, ``tempfile.mkstemp``) create private
``0600`` files, which :func:`publish_modes` widens before the rename.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["atomic_path", "atomic_dir", "replace_dir", "remove_path", "rename_noreplace",
           "publish_modes", "short_temp_name", "check_name_length", "NAME_MAX"]

NAME_MAX = 255
"""Longest file name (bytes) of common file systems (ext4, xfs, btrfs, APFS, NTFS in UTF-16 units)."""


def short_temp_name(name: str, tag: str, suffix: str = "") -> str:
    """``.<name>.<tag><suffix>``, or ``.da3gs-<hash of name>.<tag><suffix>`` when that is longer
    than :data:`NAME_MAX` bytes, so a temporary sibling fits wherever its final name fits.
    ``suffix`` is dropped too if even the hashed form would not fit."""
    full = f".{name}.{tag}{suffix}"
    if len(full.encode()) <= NAME_MAX:
        return full
    h = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    short = f".da3gs-{h}.{tag}{suffix}"
    return short if len(short.encode()) <= NAME_MAX else f".da3gs-{h}.{tag}"


def check_name_length(path: PathLike, flag: str = "") -> None:
    """Raise ``OSError(ENAMETOOLONG)`` naming ``path`` when its last component is longer than the
    file system allows (:data:`NAME_MAX` bytes, or the folder's own limit): call it before
    expensive work, so a name that cannot be written is refused at once."""
    path = Path(path)
    limit = NAME_MAX
    try:
        limit = os.pathconf(_nearest_dir(path.parent), "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        pass
    if len(path.name.encode("utf-8", "surrogateescape")) > limit:
        where = f"{flag} {path}".strip()
        raise OSError(errno.ENAMETOOLONG, f"file name longer than {limit} bytes", where)


def _nearest_dir(p: Path) -> str:
    p = Path(os.path.abspath(p))
    while not p.is_dir() and p != p.parent:
        p = p.parent
    return str(p)


def _temp_sibling(path: Path, kind: str) -> Path:
    return path.parent / short_temp_name(path.name, f"{kind}-{uuid.uuid4().hex[:8]}", path.suffix)


_UMASK: int | None = None


def _umask() -> int:
    """The process umask, read without changing it where possible (Linux ``/proc``)."""
    global _UMASK
    if _UMASK is None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("Umask:"):
                    _UMASK = int(line.split()[1], 8)
        except (OSError, ValueError):
            pass
        if _UMASK is None:
            _UMASK = os.umask(0o022)
            os.umask(_UMASK)
    return _UMASK


def publish_modes(path: PathLike) -> None:
    """Give the regular files at or under ``path`` the permissions a plain ``open()`` would:
    ``0666`` (``0777`` if executable) less the umask. Only for files the caller just wrote
    (temporaries); links are not followed."""
    path = Path(path)
    mask = _umask()

    def fix(p: str) -> None:
        st = os.lstat(p)
        if not (st.st_mode & 0o170000 == 0o100000):  # regular files only
            return
        want = (0o777 if st.st_mode & 0o100 else 0o666) & ~mask
        if st.st_mode & 0o777 != want:
            os.chmod(p, want)

    if path.is_symlink():
        return
    if path.is_dir():
        for root, _dirs, files in os.walk(path):
            for f in files:
                fix(os.path.join(root, f))
    elif path.exists():
        fix(str(path))


_AT_FDCWD, _RENAME_NOREPLACE = -100, 1


def _load_renameat2():
    try:
        f = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    f.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    f.restype = ctypes.c_int
    return f


_renameat2 = _load_renameat2()


def rename_noreplace(src: PathLike, dst: PathLike) -> None:
    """Rename ``src`` to ``dst``, failing with ``FileExistsError`` if ``dst`` exists (anything,
    an empty folder included). Atomic on Linux (``renameat2(RENAME_NOREPLACE)``); elsewhere, or
    where the file system lacks it, a check just before the rename."""
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst),
                      _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


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
        publish_modes(tmp)
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
        publish_modes(tmp)
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
