"""Writing files so that readers see all or nothing: a crash mid-write leaves the previous file."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

TMP_MARK = ".tmp-"


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(f)`` on a temporary file in ``path``'s folder, fsync it, then rename it to ``path``.

    The temporary name is ``.<name>.tmp-<pid>-<random>`` (the pid tells whether its writer still
    lives). On any failure the temporary file is removed and the old ``path`` is untouched.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_dir(path.parent)
    return path


def atomic_link(source: Path, target: Path) -> Path:
    """Make ``target`` the same file as ``source`` atomically: a hard link (no second copy on disk),
    or a copy where the filesystem has no hard links."""
    tmp = target.with_name(f".{target.name}{TMP_MARK}{os.getpid()}-link")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(source, tmp)
    except OSError:
        atomic_write(target, lambda f: _copy_into(source, f))
        return target
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


def writer_alive(temporary: Path) -> bool:
    """Whether the process that named ``temporary`` (``...tmp-<pid>-...``) still runs on this machine.
    (A reused pid makes a dead writer look alive: its file is then kept, never a live one removed.)"""
    pid_text = temporary.name.partition(TMP_MARK)[2].split("-", 1)[0]
    if not pid_text.isdigit():
        return True  # not ours to judge
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def remove_stale_temporaries(folder: Path, pattern: str = "*") -> int:
    """Remove the temporary files in ``folder`` (matching ``pattern``) whose writer has died (a kill
    mid-save); a live writer's file is left alone. Returns how many were removed."""
    removed = 0
    for path in folder.glob(f".{pattern}{TMP_MARK}*"):
        if not writer_alive(path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
    return removed
