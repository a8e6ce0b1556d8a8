"""Writing files so that readers see all or nothing (the one atomic writer of the project), and
cleaning up after a writer that was killed.

A file is written to ``.<name>.tmp-<pid>`` in its folder, locked (``flock``) while it is written,
fsynced, then renamed over ``<name>``: a crash mid-write leaves the previous file intact. A later
run removes a temporary file only when its writer is gone: its lock is free and no process has the
pid in its name (a live writer's file is never touched; a reused pid only delays the clean-up).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shutil
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

from .errors import CheckpointError, UserError

TMP_MARK = ".tmp-"


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, rename it to ``path``.
    On any failure the temporary file is removed and the old ``path`` is untouched."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            with contextlib.suppress(OSError):  # a filesystem without locks: the pid still tells
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)  # before the lock is released by closing
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)
    return path


def atomic_link(source: Path, target: Path) -> Path:
    """Make ``target`` the same file as ``source`` atomically: a hard link (no second copy on disk),
    or a copy where the filesystem has no hard links."""
    tmp = temporary_name(target)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(source, tmp)
    except OSError:
        return atomic_write(target, lambda f: _copy_into(source, f))
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)
    return target


def _copy_into(source: Path, f: IO[bytes]) -> None:
    with open(source, "rb") as src:
        shutil.copyfileobj(src, f)


def fsync_dir(directory: Path) -> None:
    """Persist a rename (the folder entry) where the platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def writer_alive(tmp: Path) -> bool:
    """Whether the process writing temporary file ``tmp`` may still be at it: it holds the file's
    lock, or a process with the pid in its name exists (between creating and locking the file the
    lock alone cannot tell; a reused pid keeps a dead writer's file until that pid is free)."""
    try:
        pid = int(tmp.name.rsplit(TMP_MARK, 1)[1])
    except ValueError:
        return True  # not a name we gave: leave it alone
    try:
        fd = os.open(tmp, os.O_RDWR)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot even open it: not ours to remove
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        pass  # no locks on this filesystem
    finally:
        os.close(fd)
    return _pid_alive(pid)


def remove_stale(paths: Iterable[Path]) -> tuple[int, list[Path]]:
    """Remove the temporary files among ``paths`` whose writer is gone; returns how many were
    removed and the files of writers still running."""
    removed, live = 0, []
    for tmp in paths:
        if writer_alive(tmp):
            live.append(tmp)
        else:
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed, live


def remove_stale_temporaries(folder: Path, pattern: str = "*") -> int:
    """Remove the temporary files in ``folder`` (of targets matching ``pattern``) left by writers that
    died mid-write; returns how many were removed."""
    return remove_stale(sorted(folder.glob(f".{pattern}{TMP_MARK}*")))[0]


def existing_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` if it is a file; else one clear :class:`CheckpointError` (a folder gets a pointer to
    the checkpoints inside it). Cheap: the command line is checked with it before heavy imports."""
    path = Path(path)
    if path.is_dir():
        # A run folder or its checkpoints/ folder: point at the files a run writes there.
        inside = [
            p
            for folder in (path, path / "checkpoints")
            for p in (folder / "last.pt", folder / "best.pt")
            if p.is_file()
        ] or sorted(path.glob("*.pt"))[:2] + sorted(path.glob("*.pth"))[:2]
        hint = " or ".join(f"'{p}'" for p in inside[:2]) if inside else "the checkpoint file inside it"
        raise CheckpointError(f"checkpoint '{path}' is a folder, not a checkpoint file; give {hint}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist (check the path)")
    return path


class RunLock:
    """An advisory lock (``flock``) on ``folder/.lock``, held by one live process: the kernel releases
    it when the process ends, however it ends, so a killed run never blocks its own resume."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / ".lock"
        self._fd: int | None = None

    def acquire(self, what: str = "run_dir") -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 512).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(
                f"{what} '{self.folder}' is in use by a run that is still going ({owner}); wait for it to "
                f"end (then resume=auto continues it), or give this run another {what}=..."
            ) from None
        except OSError:
            pass  # a filesystem without locks (some network mounts): nothing to hold
        since = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def check_writable(folder: Path, key: str) -> None:
    """Refuse a folder the command could not write into (a read-only mount, permissions), without
    writing anything: the nearest existing folder on its path must be writable. Found at start-up,
    not when the first checkpoint is written an epoch later."""
    folder = Path(folder).expanduser().absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(
            f"{key} '{folder}' cannot be made: '{existing}' is a file; write elsewhere with {key}=PATH"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        reason = "a read-only file system" if read_only else "permission denied"
        raise UserError(f"{key} '{folder}' is not writable ({reason}); write elsewhere with {key}=PATH")


PROGRESS_FILE = "last.json"  # beside last.pt: how far it got, readable without torch


def write_progress(folder: Path, epoch: int, step: int) -> None:
    """Record the epoch and step of the ``last.pt`` just written (after it: never ahead of it)."""
    text = json.dumps({"epoch": epoch, "step": step})
    atomic_write(folder / PROGRESS_FILE, lambda f: f.write(text.encode()))


def finished_run(folder: Path, epochs: int) -> str | None:
    """ "nothing to do: ..." when the run in ``folder`` already completed ``epochs`` epochs."""
    try:
        progress = json.loads((folder / PROGRESS_FILE).read_text())
        done, step = int(progress["epoch"]), int(progress["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no record (or an unreadable one): the run decides after loading last.pt
    if step or done < epochs or not (folder / "last.pt").is_file():
        return None
    return f"nothing to do: the run already completed {done} of {epochs} epochs ({folder / 'last.pt'})"
