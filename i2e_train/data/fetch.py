"""Downloads that fail fast: check the host answers, then download with a socket timeout.

Many training machines cannot reach dataset hosts. A download attempt there must end within
seconds with a message saying exactly which files to put where, never hang.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import UserError

CONNECT_TIMEOUT_S = 10.0  # reachability check
READ_TIMEOUT_S = 60.0  # a stalled transfer aborts after this long without data


def first_reachable(urls: Sequence[str], timeout: float = CONNECT_TIMEOUT_S) -> tuple[str | None, str]:
    """The first URL whose host answers a HEAD request (any HTTP status counts), and the last error."""
    reason = "no URL to try"
    for url in urls:
        try:
            request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "i2e-train"})
            with urllib.request.urlopen(request, timeout=timeout):
                return url, ""
        except urllib.error.HTTPError:
            return url, ""  # the server answered; the download itself will tell
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = str(getattr(e, "reason", e)) or type(e).__name__
    return None, reason


def download_or_explain(
    what: str,
    urls: Sequence[str],
    download: Callable[[], None],
    where: str,
    timeout: float = CONNECT_TIMEOUT_S,
) -> None:
    """Run ``download()`` if one of ``urls`` is reachable; otherwise raise a UserError saying ``where``
    to put the files. ``where`` completes the sentence "put ... ".
    """
    url, reason = first_reachable(urls, timeout)
    if url is None:
        raise UserError(f"{what} is missing and cannot be downloaded ({reason}); {where}")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(READ_TIMEOUT_S)
    try:
        download()
    except Exception as e:  # noqa: BLE001 - any failed download gets the same advice
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"downloading {what} failed ({reason[:200]}); {where}") from None
    finally:
        socket.setdefaulttimeout(previous)


def is_local_leader() -> bool:
    """True in a single process and in torchrun's local rank 0 (the one that downloads/prepares)."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def wait_for(ready: Callable[[], bool], what: str, timeout_s: float = 6 * 3600, poll_s: float = 2.0) -> None:
    """Other local ranks wait while local rank 0 downloads or prepares ``what``."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise UserError(f"timed out waiting for local rank 0 to prepare {what}")
        time.sleep(poll_s)


def missing_files(folder: Path, names: Sequence[str]) -> list[str]:
    return [n for n in names if not (folder / n).is_file()]
