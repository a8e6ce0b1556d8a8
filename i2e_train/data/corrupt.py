"""Unreadable samples: one clear line by default, or skipped and counted (``dataset.skip_corrupt``).

File-backed datasets read each sample through a loader that raises :class:`UnreadableSampleError`
naming the file. :class:`CorruptGuard` wraps such a dataset: with ``skip=False`` the error stops
the run; with ``skip=True`` the sample is *replaced* by the next readable sample of the dataset
(index + 1, + 2, ...; deterministic, so resume and DDP stay exact and every batch keeps its size),
a warning names the file, and a counter shared with the DataLoader workers lets
:class:`i2e_train.callbacks.SkippedSamplesReport` add ``skipped_samples`` to the epoch's metrics row. Reads made
outside the epoch's own pass over the data (a preview of the first samples, a second look at some
validation batches) go through :func:`uncounted`, so that each epoch counts each skip once.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator
from typing import Any

from torch.utils.data import Dataset

from ..errors import UserError
from ..monitor import log

# Give up when this many samples in a row are unreadable: the folder is broken, not a few files.
MAX_CONSECUTIVE = 64


class UnreadableSampleError(UserError):
    """A sample file that cannot be decoded. The message names the file."""

    def __init__(self, message: str) -> None:
        # A DataLoader worker's exception is re-raised in the main process as
        # ``type(e)("Caught ... in DataLoader worker process N.\nOriginal Traceback ...\n<name>: <msg>")``;
        # keep only the original one-line message so the user still gets one line.
        if "Original Traceback" in message:
            marker = f"{type(self).__name__}: "
            lines = [line.split(marker, 1)[1] for line in message.splitlines() if marker in line]
            if lines:
                message = lines[-1]
        super().__init__(message)


def describe(exc: BaseException) -> str:
    """A short reason for a decoding failure (first line of the message, or the exception type)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


class CorruptGuard(Dataset):
    """Stops on (``skip=False``) or replaces and counts (``skip=True``) unreadable samples of ``base``."""

    def __init__(self, base: Any, skip: bool, split: str) -> None:
        self.base = base
        self.skip = skip
        self.split = split
        # Shared memory: DataLoader workers (fork or spawn) increment the same counter.
        self._count = multiprocessing.Value("q", 0) if skip else None
        self._reported = 0
        # A plain attribute, so DataLoader workers started inside uncounted() inherit it (fork) or
        # receive it with the pickled dataset (spawn).
        self._counting = True

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name: str) -> Any:
        # Dataset attributes such as ``targets`` or ``classes`` stay reachable through the guard.
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def __getitem__(self, index: int) -> Any:
        n = len(self.base)
        for attempt in range(min(MAX_CONSECUTIVE, n)):
            try:
                sample = self.base[(index + attempt) % n]
            except UnreadableSampleError as e:
                if not self.skip:
                    raise UnreadableSampleError(
                        f"{e}; replace or delete the file, or set dataset.skip_corrupt=true to skip "
                        "unreadable samples"
                    ) from None
                log.warning("skipping unreadable %s sample (dataset.skip_corrupt=true): %s", self.split, e)
                continue
            if attempt and self._count is not None and self._counting:
                # One skipped sample per requested index, however many neighbours were tried.
                with self._count.get_lock():
                    self._count.value += 1
            return sample
        raise UnreadableSampleError(
            f"{min(MAX_CONSECUTIVE, n)} consecutive {self.split} samples from index {index} are unreadable; "
            "the dataset folder looks broken (check dataset.root)"
        )

    @contextlib.contextmanager
    def uncounted(self) -> Iterator[None]:
        """Reads inside the block (in this process, or in DataLoader workers started inside it) skip
        unreadable samples as usual but do not add to ``skipped_samples``."""
        before, self._counting = self._counting, False
        try:
            yield
        finally:
            self._counting = before

    @property
    def skipped_total(self) -> int:
        return int(self._count.value) if self._count is not None else 0

    def take_new_count(self) -> int:
        """Samples skipped since the previous call."""
        total = self.skipped_total
        new, self._reported = total - self._reported, total
        return new


@contextlib.contextmanager
def uncounted(dataset: Any) -> Iterator[None]:
    """:meth:`CorruptGuard.uncounted` for the guard that ``dataset`` is or wraps (through the
    ``base``/``dataset`` attributes of SeededDataset, Subset, ...); a no-op when there is none."""
    node, guards, seen = dataset, [], set()
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, CorruptGuard):
            guards.append(node)
        # vars(), not getattr(): a guard hands unknown attributes on to the dataset it wraps.
        attrs = getattr(node, "__dict__", {})
        node = attrs.get("base", attrs.get("dataset"))
    with contextlib.ExitStack() as stack:
        for guard in guards:
            stack.enter_context(guard.uncounted())
        yield
