"""Run logging: console/file logger, ``metrics.jsonl`` and TensorBoard. Only rank 0 writes files."""

from __future__ import annotations

import json
import logging
import logging.handlers
import math
import sys
from pathlib import Path
from typing import Any

LOGGER_NAME = "i2e_train"
log = logging.getLogger(LOGGER_NAME)


def setup_logging(run_dir: Path | None, rank: int = 0, filename: str = "train.log") -> logging.Logger:
    """INFO to stderr and ``run_dir/filename`` on rank 0; other ranks only report warnings.

    With ``run_dir=None`` the lines are kept in memory until :func:`attach_log_file` (a run writes
    nothing into its folder before its command is accepted)."""
    # timm warns that a 1-epoch cosine schedule is constant; that is expected in smoke runs.
    logging.getLogger("timm").setLevel(logging.ERROR)
    _route_spikingjelly_logs()
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    fmt = logging.Formatter(
        "[%(asctime)s] %(message)s" if rank == 0 else f"[rank {rank}] %(levelname)s %(message)s",
        "%H:%M:%S",
    )
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    log.addHandler(console)
    if rank == 0:
        if run_dir is not None:
            attach_log_file(run_dir, filename)
        else:
            log.addHandler(logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1))
    return log


def attach_log_file(run_dir: Path, filename: str = "train.log") -> None:
    """Start writing the log to ``run_dir/filename``, beginning with the lines kept so far."""
    run_dir.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(run_dir / filename)
    file_handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s"))
    for handler in list(log.handlers):
        if isinstance(handler, logging.handlers.MemoryHandler):
            handler.setTarget(file_handler)
            handler.flush()
            log.removeHandler(handler)
    log.addHandler(file_handler)


def _route_spikingjelly_logs() -> None:
    """SpikingJelly logs through loguru, whose default sink writes raw lines to stderr. The lines
    we want (its kernel selection) are re-emitted through our logger (``speed.spikingjelly_log``);
    keep loguru's stderr sink for everything else."""
    try:
        from loguru import logger
    except ImportError:  # pragma: no cover - loguru comes with SpikingJelly
        return
    try:
        logger.remove(0)  # loguru's default stderr sink; absent if someone configured loguru already
    except ValueError:
        return
    logger.add(sys.stderr, filter=lambda record: not record["name"].startswith("spikingjelly"))


class MetricsWriter:
    """Appends one JSON row per epoch to ``metrics.jsonl`` and mirrors scalars to TensorBoard and to
    the experiment tracker of ``logger=...`` (W&B, MLflow) when there is one."""

    def __init__(
        self, run_dir: Path, enabled: bool = True, tensorboard: bool = True, tracker: Any = None
    ) -> None:
        self.enabled = enabled
        self.run_dir = run_dir
        self.path = run_dir / "metrics.jsonl"
        self.tracker = tracker if enabled else None
        self.tensorboard = enabled and tensorboard
        self.tb = None  # opened by start(): nothing is written before the run starts

    def truncate_after(self, epoch: int) -> None:
        """Drop rows of epochs after ``epoch`` (a resumed run rewrites them)."""
        if not self.enabled or not self.path.exists():
            return
        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        kept = [r for r in rows if r.get("epoch", 0) <= epoch]
        if len(kept) != len(rows):
            from .files import atomic_write

            text = "".join(json.dumps(r) + "\n" for r in kept)
            atomic_write(self.path, lambda f: f.write(text.encode()))

    def start(self, config: dict[str, Any], resumed: bool) -> None:
        """Open TensorBoard and the tracker's run (a resumed run continues the tracker's run too)."""
        if self.tensorboard and self.tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        if self.tracker is not None:
            from .tracking import run_name

            self.tracker.start(self.run_dir, config, run_name(self.run_dir), resume=resumed)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tracker is not None:
            self.tracker.log_metrics(row, int(row["epoch"]))
        if self.tb is not None:
            step = int(row["epoch"])
            for key, value in row.items():
                if key != "epoch" and isinstance(value, int | float) and math.isfinite(value):
                    self.tb.add_scalar(_tb_tag(key), value, step)
            self.tb.flush()

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.tb is not None:
            self.tb.add_scalar(tag, value, step)

    def close(self, status: str = "finished") -> None:
        """Flush and close TensorBoard; finish the tracker's run (``finished`` | ``failed`` | ``killed``)."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.tracker is not None:
            self.tracker.finish(status)
            self.tracker = None


def _tb_tag(key: str) -> str:
    # train_loss -> train/loss, val_top1 -> val/top1; others stay at top level.
    head, _, tail = key.partition("_")
    return f"{head}/{tail}" if head in ("train", "val") and tail else key


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    """The console line of a metrics row."""
    ema = f"  EMA top1 {row['val_top1_ema']:.2f}%" if "val_top1_ema" in row else ""
    return (
        f"epoch {row['epoch']}/{epochs}  lr {row['lr']:.4g}  train loss {row['train_loss']:.4f} "
        f"top1 {row['train_top1']:.2f}%  val loss {row['val_loss']:.4f} top1 {row['val_top1']:.2f}% "
        f"top5 {row['val_top5']:.2f}% ({row['val_samples']} samples){ema}  {row['epoch_seconds']:.1f}s"
    )
