"""Output folders of da3gs commands: checked up front, written atomically, never a user's data lost.

Every command that writes a folder (``render``, ``eval``, ``pseudo-label``, ``export --official``)
goes through this module:

1. :func:`check_output_dir` runs before any expensive work (model loading, inference). It refuses,
   with one line naming the flags:

   * an output folder that equals, contains or lies inside any input (views folder, poses file or
     folder, checkpoint, scene);
   * an output whose parent is a file, the current folder (or a folder above it), a place
     that cannot be written, or a name longer than the file system allows;
   * an existing output without ``--overwrite``; and with ``--overwrite``, anything that da3gs did
     not write itself: a file, a folder without the da3gs marker (:data:`MARKER`), or a da3gs
     folder that now holds files da3gs did not write (an empty folder may be replaced).

   It also removes stale temporaries of earlier da3gs runs beside the output (see below), and
   records what it saw at the output path (absent, or a fingerprint of the folder: every entry's
   name, size, modification time and inode).

2. :func:`write_output_dir` yields a hidden temporary folder beside the output; on success it
   writes the marker (the command, da3gs version and the list of files written) and puts the
   temporary in place. On any exception, Ctrl-C or SIGTERM (see :func:`terminate_as_exception`)
   the temporary is removed and the old output, if any, is left as it was.

   **The swap rule** (re-checked at the end, since runs take minutes): the output is replaced
   only if it is exactly as :func:`check_output_dir` saw it at the start. An output that appeared
   during the run (another da3gs run into the same ``--out``, a ``mkdir`` by hand) or that changed
   (files added, removed or rewritten, a second run's result swapped in) is never replaced, with
   or without ``--overwrite``: the run fails with one line (exit 2) and its own result is
   discarded. So of two runs into one ``--out`` the first to finish wins and the other fails;
   none exits 0 with another's result silently gone. A new output is renamed into place with
   ``renameat2(RENAME_NOREPLACE)`` (Linux; a check just before the rename elsewhere), so a folder
   that appears in the last instant is not replaced either; an old output is first renamed
   aside, its fingerprint checked again, then the new one renamed in and the old one deleted.

   **What is "ours"**: a folder is a da3gs output when it holds the marker :data:`MARKER`
   (JSON with ``"signature": "da3gs output folder"``), written last into every output; its
   ``files`` list names every file the command wrote. ``--overwrite`` replaces such a folder only
   when it holds nothing beyond that list.

3. :class:`WriterPool` writes files on a few background threads while the command goes on
   computing (the next view's depth, the Gaussians' merge, the video). Use it *inside*
   :func:`write_output_dir`: leaving the pool waits for every write, so the folder is complete
   before it is marked and renamed; the first failed write is raised there (after the others
   have finished), and on any exception in the body (Ctrl-C included) queued writes are
   cancelled and running ones awaited before the temporary folder is removed.

An environment error while writing (disk full, quota, read-only file system, permission
denied, name too long) becomes one :class:`OutputError` line naming the output; nothing is
written. Files come out with the user's umask permissions (:func:`da3gs.io.atomic.publish_modes`).

Temporaries are named ``.<out>.da3gs-tmp-<pid>-<8 hex>`` (``da3gs-old`` for a replaced folder
being deleted; ``<out>`` is replaced by a short hash when the name would exceed NAME_MAX) and
hold a marker from the moment they are created. A later run removes only entries that match
that name, hold a da3gs marker and whose process is gone (checked by pid and, on Linux, the
process start time recorded in the marker).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from da3gs.errors import Da3gsError
from da3gs.io.atomic import (NAME_MAX, publish_modes, remove_path, rename_noreplace,
                             short_temp_name)

__all__ = ["MARKER", "OutputError", "Terminated", "check_output_dir", "write_output_dir",
           "is_da3gs_output", "remove_stale_temporaries", "terminate_as_exception", "WriterPool",
           "ENVIRONMENT_ERRNOS", "environment_error", "check_writable"]

MARKER = ".da3gs-output.json"
SIGNATURE = "da3gs output folder"
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.da3gs-(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}$")


class OutputError(Da3gsError):
    """An output path that cannot or must not be written."""


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM/SIGHUP so that cleanup runs as for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# --------------------------------------------------------------------------- helpers


def _resolve(p: Path) -> Path:
    return Path(os.path.abspath(p)).resolve()


def _contains(outer: Path, inner: Path) -> bool:
    return inner == outer or outer in inner.parents


def _proc_start_time(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return stat.rsplit(")", 1)[1].split()[19]
    except IndexError:
        return None


def _process_alive(pid: int, start_time: str | None) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return True
    if start_time is not None:
        now = _proc_start_time(pid)
        if now is not None and now != start_time:
            return False  # the pid was reused by another process
    return True


def _read_marker(folder: Path) -> dict | None:
    try:
        m = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return m if isinstance(m, dict) and m.get("signature") == SIGNATURE else None


def _write_marker(folder: Path, command: str, files: list[str] | None, state: str) -> None:
    from da3gs._version import __version__

    m = {"signature": SIGNATURE, "command": command, "da3gs": __version__, "state": state,
         "pid": os.getpid(), "host": socket.gethostname(),
         "pid_start_time": _proc_start_time(os.getpid())}
    if files is not None:
        m["files"] = files
    (folder / MARKER).write_text(json.dumps(m, indent=2) + "\n")


def _files_under(folder: Path) -> list[str]:
    out = []
    for root, dirs, files in os.walk(folder):
        for f in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            out.append(Path(os.path.relpath(os.path.join(root, f), folder)).as_posix())
    return sorted(out)


def is_da3gs_output(folder: str | os.PathLike) -> bool:
    """True when ``folder`` is a folder holding a da3gs output marker."""
    folder = Path(folder)
    return folder.is_dir() and not folder.is_symlink() and _read_marker(folder) is not None


def _foreign_files(folder: Path, marker: dict) -> list[str]:
    listed = set(marker.get("files") or [])
    return [f for f in _files_under(folder) if f != MARKER and f not in listed]


def remove_stale_temporaries(parent: str | os.PathLike) -> list[Path]:
    """Remove da3gs temporaries in ``parent`` whose writing process is gone; returns them.

    Only entries named like a da3gs temporary, holding a da3gs marker, written on this host by
    a process that no longer runs are removed; anything else is left alone.
    """
    parent = Path(parent)
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    host = socket.gethostname()
    for p in entries:
        m = _TMP_RE.match(p.name)
        if not m or p.is_symlink() or not p.is_dir():
            continue
        marker = _read_marker(p)
        if marker is None or marker.get("host") != host:
            continue
        pid = int(m.group("pid"))
        if m.group("kind") == "tmp" and marker.get("pid") != pid:
            continue
        if _process_alive(pid, marker.get("pid_start_time") if marker.get("pid") == pid else None):
            continue
        shutil.rmtree(p, ignore_errors=True)
        if not p.exists():
            removed.append(p)
    return removed


# --------------------------------------------------------------------------- checks


def _nearest_existing(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(out: str | os.PathLike, flag: str, shown: str | None = None,
                   folder: bool = False) -> None:
    """Raise :class:`OutputError` (one line naming ``flag``) unless ``out`` can be created: every
    existing ancestor is a folder, the nearest existing one accepts new entries (a probe folder is
    made and removed: catches read-only file systems and permissions), and the name fits NAME_MAX.
    With ``folder``, ``out`` is a folder written into: if it exists it must be a folder, and it is
    the place probed. Call it before expensive work (downloads, model loading)."""
    out = Path(os.path.abspath(out))
    shown = str(out) if shown is None else shown
    if len(out.name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        raise OutputError(f"{flag} {shown}: the name is longer than {NAME_MAX} bytes, which file "
                          "systems do not allow; choose a shorter name")
    for anc in reversed(out.parents):
        if anc.exists() and not anc.is_dir():
            raise OutputError(f"{flag} {shown}: {anc} is a file, not a folder")
    if folder and out.exists() and not out.is_dir():
        raise OutputError(f"{flag} {shown}: is a file, not a folder")
    base = _nearest_existing(out if folder else out.parent)
    try:
        probe = base / f".da3gs-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        why = "permission denied" if isinstance(e, PermissionError) else (e.strerror or type(e).__name__)
        raise OutputError(f"{flag} {shown}: cannot write in {base} ({why})") from None


def check_output_dir(out: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | None] | Iterable,
                     overwrite: bool, flag: str = "--out", clean_stale: bool = True) -> Path:
    """Check an output folder before any expensive work; returns it as an absolute path.

    Args:
        out: the output folder asked for.
        inputs: ``{flag: path}`` (or ``(flag, path)`` pairs) of everything the command reads:
            views folder, poses file or folder, checkpoint, scene... ``None`` values and paths
            that do not exist on disk (hub ids, ``random:`` models) are ignored.
        overwrite: ``--overwrite`` was given.
        flag: the flag the output came from, used in messages.
        clean_stale: remove stale da3gs temporaries beside the output.

    Raises:
        OutputError: one line naming the flags and what is wrong (module docstring).
    """
    shown = str(out)
    if not shown.strip():
        raise OutputError(f"{flag}: empty path")
    out_abs = _resolve(Path(out))
    items = inputs.items() if isinstance(inputs, Mapping) else inputs
    for in_flag, path in items:
        if path is None or str(path) == "":
            continue
        p = Path(path)
        if not (p.exists() or p.is_symlink()):
            continue
        p_abs = _resolve(p)
        if p_abs == out_abs:
            raise OutputError(f"{flag} {shown}: is the {in_flag} input; choose another output folder")
        if _contains(out_abs, p_abs):
            raise OutputError(f"{flag} {shown}: contains the {in_flag} input {path}; choose an "
                              "output folder outside the inputs")
        if _contains(p_abs, out_abs):
            raise OutputError(f"{flag} {shown}: lies inside the {in_flag} input {path}; choose an "
                              "output folder outside the inputs")
    cwd = _resolve(Path.cwd())
    if _contains(out_abs, cwd):
        raise OutputError(f"{flag} {shown}: is the current folder or contains it; name a new "
                          "folder, e.g. {flag} result".replace("{flag}", flag))
    if out_abs == out_abs.parent:
        raise OutputError(f"{flag} {shown}: is the file-system root")
    check_writable(out_abs, flag, shown)
    if Path(out).is_symlink() or out_abs.exists():
        if not overwrite:
            raise OutputError(f"{flag} {shown}: already exists; pass --overwrite to replace it")
        if Path(out).is_symlink():
            raise OutputError(f"{flag} {shown}: is a symbolic link; --overwrite only replaces "
                              "folders that da3gs wrote")
        if not out_abs.is_dir():
            raise OutputError(f"{flag} {shown}: is a file, not a folder that da3gs wrote; "
                              "--overwrite only replaces da3gs output folders")
        present = _files_under(out_abs)
        if present:
            marker = _read_marker(out_abs)
            if marker is None:
                raise OutputError(f"{flag} {shown}: not a folder that da3gs wrote (no {MARKER}); "
                                  "--overwrite only replaces da3gs output folders, so move it "
                                  "away or choose another output folder")
            foreign = _foreign_files(out_abs, marker)
            if foreign:
                more = f" (+{len(foreign) - 3} more)" if len(foreign) > 3 else ""
                raise OutputError(f"{flag} {shown}: holds files da3gs did not write "
                                  f"({', '.join(foreign[:3])}{more}); --overwrite would delete "
                                  "them, so move them away first")
    if clean_stale:
        remove_stale_temporaries(out_abs.parent)
    _SEEN[out_abs] = _Seen(flag, shown, _fingerprint(out_abs))
    return out_abs


@dataclass(frozen=True)
class _Seen:
    """What :func:`check_output_dir` saw at an output path: the flag and text the user gave, and
    the path's fingerprint (None: absent)."""

    flag: str
    shown: str
    fingerprint: tuple | None

    def name(self) -> str:
        return f"{self.flag} {self.shown}".strip()


_SEEN: dict[Path, _Seen] = {}  # resolved output path -> state at check time (this process)


def _fingerprint(p: Path) -> tuple | None:
    """A value that changes when anything at ``p`` is created, removed, added, renamed or
    rewritten: None when absent; else its inode and every entry's (path, size, mtime, inode)."""
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return None
    if p.is_symlink() or not p.is_dir():
        return ("file", st.st_ino, st.st_size, st.st_mtime_ns)
    entries = []
    for root, dirs, files in os.walk(p):
        for n in dirs + files:
            q = os.path.join(root, n)
            try:
                e = os.lstat(q)
            except OSError:
                continue
            entries.append((os.path.relpath(q, p), e.st_size, e.st_mtime_ns, e.st_ino))
    return ("dir", st.st_ino, tuple(sorted(entries)))


ENVIRONMENT_ERRNOS = frozenset(getattr(errno, n) for n in (
    "ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "ENAMETOOLONG", "ENOTDIR", "EISDIR", "EFBIG",
    "EIO") if hasattr(errno, n))
"""``OSError`` numbers that mean the environment, not a da3gs bug: reported in one line."""


def environment_error(e: BaseException, what: str) -> OutputError | None:
    """An :class:`OutputError` line for an environment ``OSError`` (:data:`ENVIRONMENT_ERRNOS`)
    met while writing ``what`` (e.g. ``"--out runs/a"``), naming the file; None for others."""
    if not isinstance(e, OSError) or e.errno not in ENVIRONMENT_ERRNOS:
        return None
    where = f" ({e.filename})" if e.filename and str(e.filename) not in what else ""
    return OutputError(f"{what}: {e.strerror or os.strerror(e.errno)}{where}; nothing written")


# --------------------------------------------------------------------------- writing


def _temp_sibling(path: Path, kind: str) -> Path:
    return path.parent / short_temp_name(path.name, f"da3gs-{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextmanager
def _signals_blocked() -> Iterator[None]:
    """Defer SIGINT/SIGTERM/SIGHUP (POSIX) while a folder is committed or cleaned up."""
    sigs = {getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)}
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextmanager
def write_output_dir(out: str | os.PathLike, command: str) -> Iterator[Path]:
    """Yield a temporary folder (marked as a da3gs temporary) beside ``out``; on success mark it
    as the ``command``'s output and put it in place of ``out``. On any exception (Ctrl-C and
    :class:`Terminated` included) the temporary is removed and ``out`` is left untouched.

    Call :func:`check_output_dir` first: ``out`` is replaced only if it is as that check saw it
    (the swap rule of the module docstring; without a check, as it was when this function was
    entered); otherwise :class:`OutputError`. The swap runs with SIGINT and SIGTERM deferred,
    so at every instant ``out`` is absent, the old or the new folder. Environment errors while
    writing (disk full ...) become one :class:`OutputError` line.
    """
    out = _resolve(Path(out))
    seen = _SEEN.pop(out, None) or _Seen("", str(out), _fingerprint(out))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_sibling(out, "tmp")
        tmp.mkdir()
    except OSError as e:
        raise (environment_error(e, seen.name()) or e) from None
    try:
        _write_marker(tmp, command, None, "writing")
        yield tmp
        publish_modes(tmp)
        _write_marker(tmp, command, [f for f in _files_under(tmp) if f != MARKER], "complete")
        with _signals_blocked():
            _commit(tmp, out, seen, command)
    except BaseException as e:
        with _signals_blocked():
            remove_path(tmp)
        err = environment_error(e, seen.name())
        if err is not None:
            raise err from None
        raise


def _changed(seen: _Seen, command: str, now: tuple | None) -> OutputError:
    what = "appeared" if seen.fingerprint is None else "was removed" if now is None else "changed"
    return OutputError(
        f"{seen.name()}: {what} while da3gs {command} was running (another run into the same "
        "folder, or files added by hand); it is not replaced, with or without --overwrite, and "
        "this run's result was discarded: run again (choose another folder, or --overwrite to "
        "replace a da3gs output)")


def _commit(tmp: Path, out: Path, seen: _Seen, command: str) -> None:
    """Put the finished ``tmp`` in place of ``out`` if ``out`` is still as ``seen`` (else
    :class:`OutputError`, ``out`` untouched)."""
    now = _fingerprint(out)
    if now != seen.fingerprint:
        raise _changed(seen, command, now)
    if seen.fingerprint is None:
        try:
            rename_noreplace(tmp, out)
        except FileExistsError:
            raise _changed(seen, command, _fingerprint(out)) from None
        return
    old = _temp_sibling(out, "old")
    os.rename(out, old)
    if _fingerprint(old) != seen.fingerprint:  # changed between the check and the rename
        try:
            rename_noreplace(old, out)
        except OSError:
            raise OutputError(f"{seen.name()}: changed while being replaced; the folder that was "
                              f"there is kept as {old}") from None
        raise _changed(seen, command, _fingerprint(out))
    try:
        rename_noreplace(tmp, out)
    except FileExistsError:
        kept = out.with_name(short_temp_name(out.name, f"previous-{uuid.uuid4().hex[:8]}")[1:])
        os.rename(old, kept)
        raise OutputError(f"{seen.name()}: appeared again while being replaced; not replaced, "
                          f"the previous output is kept as {kept}") from None
    remove_path(old)


@contextmanager
def terminate_as_exception(signals=("SIGTERM", "SIGHUP")) -> Iterator[None]:
    """Within the block, SIGTERM/SIGHUP raise :class:`Terminated` in the main thread, so that
    ``try/finally`` and ``except BaseException`` cleanups run as they do for Ctrl-C. Further
    signals during the cleanup are ignored (SIGKILL still works). Outside the main thread this
    does nothing."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum, frame):
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        raise Terminated(signum)

    for name in signals:
        s = getattr(signal, name, None)
        if s is None:
            continue
        try:
            previous[s] = signal.signal(s, handler)
        except (ValueError, OSError):
            pass
    try:
        yield
    finally:
        for s, h in previous.items():
            try:
                signal.signal(s, h)
            except (ValueError, OSError):
                pass


# --------------------------------------------------------------------------- background writes


class WriterPool:
    """A few threads that write output files while the caller computes.

    ``submit(name, fn, *args)`` queues ``fn(*args)``; ``wait()`` blocks until every queued write
    has finished and raises the first failure (in submission order) once all have settled, so no
    write is still running when the caller cleans up. Used as a context manager, leaving the block
    normally calls ``wait()``; leaving it with an exception cancels the writes not yet started,
    waits for the running ones and lets the exception through. ``times`` holds the seconds each
    write took (summed per name), for the command's timing report.

    Threads pay because the writers spend their time in code that releases the GIL (zlib in the
    PNG and SPZ encoders, NumPy, file writes); ``workers`` defaults to ``min(4, cpu_count)``.
    """

    def __init__(self, workers: int | None = None):
        import threading
        from concurrent.futures import ThreadPoolExecutor

        self._lock = threading.Lock()
        n = workers if workers is not None else min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=max(1, n), thread_name_prefix="da3gs-writer")
        self._futures: list = []
        self.times: dict[str, float] = {}

    def submit(self, name: str, fn, *args, **kwargs):
        """Queue ``fn(*args, **kwargs)`` under ``name``; returns its future."""
        import time

        lock = self._lock

        def run():
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with lock:
                    self.times[name] = round(self.times.get(name, 0.0) + time.perf_counter() - t, 4)

        fut = self._pool.submit(run)
        self._futures.append(fut)
        return fut

    def wait(self) -> None:
        """Wait for every queued write; raise the first failure (submission order). After a
        failure the writes not yet started are cancelled (the run has failed anyway)."""
        from concurrent.futures import FIRST_EXCEPTION, wait

        futures, self._futures = self._futures, []
        _, pending = wait(futures, return_when=FIRST_EXCEPTION)
        if pending:
            for f in pending:
                f.cancel()
            wait(pending)
        for f in futures:
            if f.cancelled():
                continue
            if f.exception() is not None:
                raise f.exception()

    def close(self, cancel: bool = False) -> None:
        """Stop the threads: ``cancel`` drops queued writes; running ones are always awaited."""
        self._pool.shutdown(wait=True, cancel_futures=cancel)

    def __enter__(self) -> "WriterPool":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.close(cancel=True)
            return
        try:
            self.wait()
        except BaseException:
            self.close(cancel=True)
            raise
        self.close()
