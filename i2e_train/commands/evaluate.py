"""``i2e-eval checkpoint=PATH``: evaluate a checkpoint on its validation data.

The model, data and I2E settings come from the config stored in the checkpoint; command-line
overrides (``dataset.root=...``, ``trainer.device=cpu``) replace individual values. A checkpoint
without a stored config (the paper's released files) takes them from the command line:
``i2e-eval checkpoint=i2e_imagenet_r18.pth dataset=imagenet dataset.root=/data/imagenet``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from .. import config, files
from ..errors import CheckpointError, UserError
from . import cli

PROG = "i2e-eval"


def merge_with_checkpoint_config(
    composed: DictConfig, stored: dict[str, Any] | None, overrides: list[str]
) -> DictConfig:
    """The stored training config with the user's command-line overrides applied on top.

    ``composed`` is the eval config Hydra built from the same overrides, so the value an override
    produced (also for a whole group such as ``dataset=cifar10``) is read from it. The ``trainer``
    section describes the machine and loop, not the model: it always comes from ``composed`` (so
    a training run's ``limit_val_batches`` does not shorten the evaluation).
    """
    if not stored:
        return composed
    merged = OmegaConf.create(stored)
    merged.trainer = composed.trainer
    for override in overrides:
        key = override.lstrip("+~").partition("=")[0]
        if key.startswith("hydra"):
            continue
        value = OmegaConf.select(composed, key)
        OmegaConf.update(
            merged,
            key,
            OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value,
            merge=False,
            force_add=True,
        )
    for key in ("checkpoint", "out_dir", "use_ema"):
        merged[key] = composed[key]
    if "ratio" in merged.get("dataset", {}):
        # Configs stored before the ratio moved to i2e.ratio (its one home) kept a copy here.
        merged.dataset.pop("ratio")
    return merged


def check(cfg: DictConfig) -> None:
    """Before any heavy import: the checkpoint exists, the machine settings are valid, and the
    report's folder can be written (next to a read-only checkpoint it cannot: say out_dir=...)."""
    files.existing_checkpoint(cfg.checkpoint)
    config.read(config.TrainerOptions, cfg, "trainer")
    files.check_writable(Path(cfg.out_dir), "out_dir")


def run(cfg: DictConfig) -> dict[str, Any]:
    # Heavy imports here, so that a mistyped command line is answered at once.
    import torch

    from ..data.loading import val_loader
    from ..monitor import setup_logging
    from ..training import builders, checkpoint, distributed, engine, speed
    from ..training.activity import SpikeActivity
    from ..training.activity import summary_lines as spiking_summary

    ckpt_path = Path(cfg.checkpoint)
    ckpt = checkpoint.load_checkpoint(ckpt_path)
    checkpoint.extract_state_dict(ckpt, ckpt_path)  # fail early on foreign files
    stored = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else None
    cfg = merge_with_checkpoint_config(cfg, stored, list(HydraConfig.get().overrides.task))
    out_dir = Path(HydraConfig.get().runtime.output_dir)

    opts = config.read(config.TrainerOptions, cfg, "trainer")
    try:
        dist = distributed.init_distributed(opts.device)
    except ValueError as e:
        raise UserError(str(e)) from None
    setup_logging(out_dir, dist.rank, filename="eval.log")
    try:
        speed.set_threads(opts.threads, dist.device)
        amp = builders.resolve_eval_amp(
            opts.eval_precision, builders.resolve_amp(opts.precision, dist.device)
        )
        data = builders.build_data(cfg)
        model = builders.build_network(str(cfg.model.name), data.num_classes).to(dist.device)
        speed.prepare_model(model, dist.device, amp.dtype, neuron_precision=opts.neuron_precision)
        use_ema = bool(cfg.get("use_ema", True)) and bool(ckpt.get("ema"))
        try:
            checkpoint.load_weights(model, ckpt_path, ema=use_ema)
        except CheckpointError as e:
            source = "its stored config" if stored else "the command line (model=..., dataset=...)"
            raise CheckpointError(f"{e} (model and dataset came from {source})") from None
        i2e = config.read(config.I2EOptions, cfg, "i2e")
        seed = int(cfg.get("seed", 0))
        converter = builders.build_converter(
            i2e, data, seed, amp.dtype or torch.float32, builders.read_sensor(cfg)
        )
        if converter is not None:
            converter.to(dist.device).eval()
        loader = val_loader(
            data,
            batch_size=opts.val_batch(dist.world_size),
            rank=dist.rank,
            world_size=dist.world_size,
            workers=config.resolve_workers(opts.num_workers),
            device=dist.device,
        )
        with SpikeActivity(model) as activity:
            result = engine.evaluate(
                model,
                loader,
                num_classes=data.num_classes,
                device=dist.device,
                converter=converter,
                amp=amp,
                limit_batches=opts.limit_val_batches,
            )
        spiking = activity.report()  # a collective: all ranks
        report = {
            "checkpoint": str(ckpt_path),
            "epoch": ckpt.get("epoch"),
            "weights": "ema" if use_ema else "model",
            "precision": str(amp.dtype or "fp32").removeprefix("torch."),
            "model": str(cfg.model.name),
            "dataset": str(cfg.dataset.name),
            "top1": result.top1,
            "top5": result.top5,
            "loss": result.loss,
            "samples": result.samples,
            "per_class_accuracy": dict(zip(_class_names(data), result.per_class_accuracy, strict=True)),
            "per_class_samples": dict(zip(_class_names(data), result.per_class_total, strict=True)),
            "world_size": dist.world_size,
            **spiking.to_json(),
        }
        if dist.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
            _write_report_files(out_dir, result.confusion, _class_names(data), spiking, report)
            _print_summary(report, out_dir, spiking_summary(spiking))
            _track(cfg, ckpt_path, report)
        return report
    finally:
        distributed.cleanup()


def _track(cfg: DictConfig, ckpt_path: Path, report: dict[str, Any]) -> None:
    """The report goes to the run's experiment tracker too (``logger=...``), into the training run's
    tracker run when the checkpoint sits in a run folder."""
    from ..tracking import run_name
    from ..training.builders import build_tracker

    tracker = build_tracker(cfg)
    if tracker is None:
        return
    run_dir = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent
    tracker.start(run_dir, OmegaConf.to_container(cfg, resolve=True), run_name(run_dir), resume=True)
    try:
        tracker.log_summary(report, prefix=f"eval/{ckpt_path.stem}")
    finally:
        tracker.finish()


def _class_names(data: Any) -> list[str]:
    return list(data.class_names) if data.class_names else [str(i) for i in range(data.num_classes)]


def _write_report_files(
    out_dir: Path, confusion: list[list[int]], names: list[str], spiking: Any, report: dict[str, Any]
) -> None:
    from ..training import activity

    activity.write_confusion_csv(out_dir / "confusion_matrix.csv", confusion, names)
    title = (
        f"{report['model']} on {report['dataset']}: top-1 {report['top1']:.2f}% ({report['samples']} samples)"
    )
    activity.write_confusion_png(out_dir / "confusion_matrix.png", confusion, names, title)
    activity.write_activity_csvs(out_dir, spiking)


def _print_summary(report: dict[str, Any], out_dir: Path, extra: list[str] | None = None) -> None:
    from ..monitor import log

    log.info(
        "%s on %s: top-1 %.2f%%  top-5 %.2f%%  loss %.4f  (%d samples, checkpoint epoch %s)",
        report["model"],
        report["dataset"],
        report["top1"],
        report["top5"],
        report["loss"],
        report["samples"],
        report["epoch"],
    )
    per_class = [(k, v) for k, v in report["per_class_accuracy"].items() if v is not None]
    if len(per_class) <= 20:
        log.info("per-class top-1: %s", "  ".join(f"{k}: {v:.1f}%" for k, v in per_class))
    else:
        ranked = sorted(per_class, key=lambda kv: kv[1])
        log.info("lowest per-class top-1: %s", "  ".join(f"{k}: {v:.1f}%" for k, v in ranked[:5]))
        log.info("highest per-class top-1: %s", "  ".join(f"{k}: {v:.1f}%" for k, v in ranked[-5:]))
    for line in extra or []:
        log.info("%s", line)
    log.info(
        "wrote %s and confusion_matrix.csv/.png, firing_rates.csv, synaptic_ops.csv there",
        out_dir / "eval.json",
    )


def main() -> None:
    cli.run_app("eval", PROG, run, check)


if __name__ == "__main__":
    main()
