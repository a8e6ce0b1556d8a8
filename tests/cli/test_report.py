"""i2e-report: the results table, the seed groups, the plots and the one-line errors.

The slow tests train real runs with the real CLIs (a Hydra ``-m`` sweep of two orders x two seeds,
one single run, and an i2e-eval of it) and check every number of the table against the runs'
``metrics.jsonl``. The fast tests build run folders by hand, in the layout Hydra writes, for the
columns a tiny CPU run cannot produce (EMA, a paper preset) and for odd runs.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
import yaml
from conftest import SMOKE, run_cli
from PIL import Image

from i2e_train.commands import report as reports
from i2e_train.commands.report import PANEL_SIZE, SINGLE_SIZE

# Two epochs (a curve needs two points) of the CLI smoke settings, on 16x16 images.
TINY = (
    *(o for o in SMOKE if not o.startswith("trainer.epochs=")),
    "trainer.epochs=2",
    "trainer.firing_rate_batches=1",
    "dataset.image_size=16",
)
PLOTS = {
    "curves.png": PANEL_SIZE,
    "loss.png": SINGLE_SIZE,
    "top1.png": SINGLE_SIZE,
    "lr.png": SINGLE_SIZE,
    "firing_rate.png": SINGLE_SIZE,
}


# ----------------------------------------------------------------------------- helpers
def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == reports.CSV_COLUMNS
    return rows


def num(text: str) -> float | None:
    return float(text) if text != "" else None


def check_plots(out: Path) -> None:
    for name, (w, h) in PLOTS.items():
        path = out / name
        assert path.is_file(), name
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert img.format == "PNG"
            assert img.size == (round(w * reports.DPI), round(h * reports.DPI)), name


def check_row_against_metrics(row: dict[str, str], run: Path) -> None:
    """Every number of a results.csv row, recomputed from the run's metrics.jsonl and config."""
    rows = metrics(run)
    val = [r["val_top1"] for r in rows]
    best = max(val)
    assert num(row["best_val_top1"]) == pytest.approx(best, abs=1e-6)
    assert int(row["best_epoch"]) == rows[val.index(best)]["epoch"]
    assert num(row["final_val_top1"]) == pytest.approx(val[-1], abs=1e-6)
    assert int(row["epochs_done"]) == rows[-1]["epoch"] == len(rows)
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert int(row["epochs_planned"]) == config["trainer"]["epochs"]
    assert num(row["wall_seconds"]) == pytest.approx(sum(r["epoch_seconds"] for r in rows), abs=1e-5)
    speed = statistics.fmean(r["train_images_per_second"] for r in rows)
    assert num(row["images_per_second"]) == pytest.approx(speed, abs=1e-5)
    assert row["dataset"] == config["dataset"]["name"] and row["model"] == config["model"]["name"]
    assert row["seed"] == str(config["seed"])


def write_run(
    path: Path,
    rows: list[dict],
    config: dict | None = None,
    overrides: list[str] | None = None,
    preset: str | None = None,
) -> Path:
    """A run folder as i2e-train writes it (metrics.jsonl and Hydra's .hydra/ files)."""
    hydra = path / ".hydra"
    hydra.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "run_dir": str(path),
        "seed": 0,
        "paper": None,
        "dataset": {"name": "digits", "split_seed": "${seed}"},
        "model": {"name": "ms_resnet18"},
        "trainer": {"epochs": len(rows)},
        **(config or {}),
    }
    (hydra / "config.yaml").write_text(yaml.safe_dump(cfg))
    choices = {"experiment": preset, "dataset": "digits", "model": "ms_resnet18"}
    (hydra / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    (hydra / "overrides.yaml").write_text(yaml.safe_dump(overrides or []))
    return path


def epoch_row(epoch: int, val: float, **extra) -> dict:
    return {
        "epoch": epoch,
        "lr": 0.1 / epoch,
        "train_loss": 2.0 / epoch,
        "train_top1": val - 5,
        "val_loss": 1.5 / epoch,
        "val_top1": val,
        "val_top5": 100.0,
        "epoch_seconds": 10.0,
        "train_images_per_second": 100.0 * epoch,
        "val_firing_rate": 0.1 + 0.01 * epoch,
        "firing_rates": {"layer1.0.sn1": 0.2},
        **extra,
    }


def report_cli(*args: str, cwd: Path):
    return run_cli("report", *args, cwd=cwd, timeout=300)


# ----------------------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """runs/sweep: ``i2e-train -m i2e.order=gamma_alpha_beta,alpha_beta_gamma seed=0,1`` (jobs
    0..3); runs/single: one run with seed=3, evaluated by i2e-eval."""
    root = tmp_path_factory.mktemp("compare")
    sweep = run_cli(
        "train",
        "-m",
        "i2e.order=gamma_alpha_beta,alpha_beta_gamma",
        "seed=0,1",
        f"run_dir={root / 'runs' / 'sweep'}",
        *TINY,
        cwd=root,
    )
    assert sweep.returncode == 0, sweep.output[-3000:]
    single = run_cli("train", f"run_dir={root / 'runs' / 'single'}", "seed=3", *TINY, cwd=root)
    assert single.returncode == 0, single.output[-3000:]
    evaluated = run_cli(
        "evaluate",
        f"checkpoint={root / 'runs' / 'single' / 'checkpoints' / 'best.pt'}",
        "trainer.device=cpu",
        "trainer.batch_size=8",
        "trainer.limit_val_batches=2",
        cwd=root,
    )
    assert evaluated.returncode == 0, evaluated.output[-3000:]
    return root


@pytest.mark.slow
def test_multirun_writes_one_folder_per_job_with_hydra_files(trained: Path) -> None:
    sweep = trained / "runs" / "sweep"
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1", "2", "3"]
    for job in jobs:
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            assert (sweep / job / ".hydra" / name).is_file()
        assert len(metrics(sweep / job)) == 2


@pytest.mark.slow
def test_sweep_folder_table_groups_and_plots(trained: Path) -> None:
    sweep = trained / "runs" / "sweep"
    result = report_cli(str(sweep), "--out", "rep_sweep", "--title", "orders", cwd=trained)
    assert result.returncode == 0, result.output
    out = trained / "rep_sweep"
    rows = read_csv(out / "results.csv")
    assert [r["run"] for r in rows] == ["0", "1", "2", "3"]
    by_order: dict[str, list[float]] = {}
    for row in rows:
        run = sweep / row["run"]
        check_row_against_metrics(row, run)
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        order = next(o for o in overrides if o.startswith("i2e.order="))
        seed = next(o for o in overrides if o.startswith("seed="))
        # Only what the sweep varies is in the column; the shared tiny settings are listed once.
        assert row["overrides"] == f"{order} {seed}"
        assert row["preset"] == "" and row["paper_top1"] == "" and row["eval_top1"] == ""
        by_order.setdefault(order, []).append(float(row["best_val_top1"]))
    md = (out / "results.md").read_text()
    assert md.startswith("# orders\n")
    assert "Overrides common to all runs:" in md and "`trainer.epochs=2`" in md
    # One group line per order, with mean ± sample std and min–max of the two seeds' best top-1.
    assert len(by_order) == 2
    for order, values in by_order.items():
        line = next(line for line in md.splitlines() if line.startswith(f"| {order} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == "2" and cells[2] == "0, 1"
        mean, std = statistics.fmean(values), statistics.stdev(values)
        assert cells[3] == f"{mean:.2f} ± {std:.2f}"
        assert cells[4] == f"{min(values):.2f}–{max(values):.2f}"
    for name in PLOTS:
        assert f"]({name})" in md
    check_plots(out)
    # stdout carries the same table.
    assert "| run | preset | overrides |" in result.stdout


@pytest.mark.slow
def test_runs_folder_at_any_depth_with_eval(trained: Path) -> None:
    result = report_cli("runs", "--out", "rep_all", "--sort", "best", cwd=trained)
    assert result.returncode == 0, result.output
    rows = read_csv(trained / "rep_all" / "results.csv")
    assert sorted(r["run"] for r in rows) == ["single", "sweep/0", "sweep/1", "sweep/2", "sweep/3"]
    best = [float(r["best_val_top1"]) for r in rows]
    assert best == sorted(best, reverse=True)
    for row in rows:
        check_row_against_metrics(row, trained / "runs" / row["run"])
    single = next(r for r in rows if r["run"] == "single")
    report = json.loads((trained / "runs" / "single" / "eval" / "best" / "eval.json").read_text())
    assert single["eval_name"] == "best"
    assert num(single["eval_top1"]) == pytest.approx(report["top1"], abs=1e-6)
    assert single["overrides"] == "seed=3"  # the sweep's i2e.order is not among its overrides
    md = (trained / "rep_all" / "results.md").read_text()
    assert "eval top-1" in md
    # The single run (seed 3) trained with the default order, gamma_alpha_beta: it joins the
    # sweep's two runs that set that order explicitly; alpha_beta_gamma is the other group.
    section = md.split("## Grouped by everything but the seed")[1].split("## Learning curves")[0]
    lines = [
        line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| group")
    ]
    assert [line.split(" | ")[:3] for line in lines] == [
        ["| i2e.order=gamma_alpha_beta", "3", "3, 0, 1"],
        ["| i2e.order=alpha_beta_gamma", "2", "0, 1"],
    ]
    gamma = [float(r["best_val_top1"]) for r in rows if "alpha_beta_gamma" not in r["overrides"]]
    assert len(gamma) == 3
    assert f"| {statistics.fmean(gamma):.2f} ± {statistics.stdev(gamma):.2f} |" in lines[0]


# ----------------------------------------------------------------------------- hand-made runs
def test_ema_paper_eval_and_unfinished_columns(tmp_path: Path) -> None:
    run = write_run(
        tmp_path / "runs" / "c10",
        [
            epoch_row(1, 80.0, val_top1_ema=79.0),
            epoch_row(2, 90.5, val_top1_ema=91.25),
            epoch_row(3, 90.0, val_top1_ema=91.0),
        ],
        config={"paper": {"row": "CIFAR-10 Baseline-II", "top1": 89.23}, "trainer": {"epochs": 256}},
        overrides=["experiment=cifar10_baseline2", "run_dir=x"],
        preset="cifar10_baseline2",
    )
    for name, top1 in (("last", 89.5), ("best", 90.25)):
        (run / "eval" / name).mkdir(parents=True)
        (run / "eval" / name / "eval.json").write_text(json.dumps({"top1": top1, "epoch": 2}))
    report = reports.build_report([tmp_path / "runs"], tmp_path / "out", plots=False)
    (row,) = report.rows
    assert row.run == "c10" and row.preset == "cifar10_baseline2" and row.overrides == ""
    assert (row.epochs_done, row.epochs_planned) == (3, 256)
    assert (row.best_val_top1, row.best_epoch, row.final_val_top1) == (90.5, 2, 90.0)
    assert row.ema_val_top1 == 91.25
    assert row.paper_top1 == 89.23 and row.diff_vs_paper == pytest.approx(90.5 - 89.23)
    assert row.eval_top1 == 90.25 and row.eval_name == "best"
    assert row.wall_seconds == 30.0 and row.images_per_second == 200.0
    md = (tmp_path / "out" / "results.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| run |"))
    assert "EMA top-1" in header and "| paper | Δ paper |" in header
    line = next(line for line in md.splitlines() if line.startswith("| c10 |"))
    assert (
        "| 3/256 | 90.50 (ep 2) | 90.00 | 91.25 | 89.23 | +1.27 | 30.0s | 200 | best 90.25, last 89.50 |"
        in line
    )
    assert report.groups is None  # no two runs differ only in their seed
    assert not (tmp_path / "out" / "curves.png").exists()


def test_seed_groups_from_hand_made_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    best = {("a", 0): 50.0, ("a", 1): 60.0, ("a", 2): 70.0, ("b", 0): 40.0, ("b", 1): 44.0}
    for job, ((order, seed), value) in enumerate(best.items()):
        write_run(
            sweep / str(job),
            [epoch_row(1, value - 10), epoch_row(2, value)],
            config={"seed": seed, "i2e": {"order": order}},
            overrides=[f"i2e.order={order}", f"seed={seed}", "trainer.epochs=2", f"run_dir={sweep}"],
        )
    report = reports.build_report([sweep], tmp_path / "out", plots=False)
    assert [g.label for g in report.groups] == ["i2e.order=a", "i2e.order=b"]
    a, b = report.groups
    assert a.stats("best_val_top1") == (60.0, 10.0, 50.0, 70.0)
    mean, std, lo, hi = b.stats("best_val_top1")
    assert (mean, lo, hi) == (42.0, 40.0, 44.0) and std == pytest.approx(math.sqrt(8))
    assert report.common == {"trainer.epochs": "2"}
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| i2e.order=a | 3 | 0, 1, 2 | 60.00 ± 10.00 | 50.00–70.00 | 60.00 ± 10.00 |" in md
    assert "| i2e.order=b | 2 | 0, 1 | 42.00 ± 2.83 | 40.00–44.00 | 42.00 ± 2.83 |" in md


@pytest.mark.slow
def test_dozens_of_runs_missing_keys_single_epoch_and_empty(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    planned = {"trainer": {"epochs": 6}}
    for i in range(40):
        rows = [epoch_row(e, 50.0 + i * 0.5 + e) for e in range(1, 1 + (i % 5) + 1)]
        if i % 3 == 0:  # an older run without lr and firing rates
            rows = [
                {k: v for k, v in r.items() if k not in ("lr", "val_firing_rate", "firing_rates")}
                for r in rows
            ]
        name = f"a_rather_long_experiment_name_number_{i:02d}_with_extra_words"
        write_run(runs / name, rows, planned, overrides=[f"seed={i}"])
    write_run(runs / "single_epoch", [epoch_row(1, 12.5)], planned, overrides=["seed=99"])
    write_run(
        runs / "nan_loss", [epoch_row(1, 10.0, train_loss=float("nan"))], planned, overrides=["seed=98"]
    )
    empty = write_run(runs / "started", [], planned, overrides=["seed=97"])
    (empty / "metrics.jsonl").write_text("")
    report = reports.build_report([runs], tmp_path / "out", title="many")
    assert len(report.rows) == 43
    started = next(r for r in report.rows if r.run == "started")
    assert started.epochs_done == 0 and started.best_val_top1 is None and started.wall_seconds is None
    single = next(r for r in report.rows if r.run == "single_epoch")
    assert (single.best_val_top1, single.final_val_top1, single.epochs_done) == (12.5, 12.5, 1)
    rows = read_csv(tmp_path / "out" / "results.csv")
    assert len(rows) == 43 and next(r for r in rows if r["run"] == "started")["best_val_top1"] == ""
    check_plots(tmp_path / "out")
    # all 43 runs differ only in their seed: one group (its statistics skip the empty run)
    (group,) = report.groups
    assert len(group.rows) == 43
    assert group.stats("best_val_top1")[3] == max(r.best_val_top1 for r in report.rows if r.best_val_top1)


@pytest.mark.slow
def test_plots_of_two_odd_runs(tmp_path: Path) -> None:
    """One run of a single epoch, one without lr/firing rates: every plot is still written."""
    write_run(tmp_path / "one", [epoch_row(1, 12.5)])
    old = [
        {k: v for k, v in epoch_row(e, 20.0).items() if k not in ("lr", "val_firing_rate")} for e in (1, 2)
    ]
    write_run(tmp_path / "old", old)
    report = reports.build_report([tmp_path / "one", tmp_path / "old"], tmp_path / "out")
    assert [f.name for f in report.files] == ["results.md", "results.csv", *PLOTS]
    check_plots(tmp_path / "out")


def test_natural_order_and_sort(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for job, value in ((0, 30.0), (1, 10.0), (2, 20.0), (10, 40.0)):
        write_run(sweep / str(job), [epoch_row(1, value)], overrides=[f"seed={job}"])
    assert [p.name for p in reports.find_runs([sweep])] == ["0", "1", "2", "10"]
    report = reports.build_report([sweep], tmp_path / "o1", sort="best", plots=False)
    assert [r.run for r in report.rows] == ["10", "0", "2", "1"]
    report = reports.build_report([sweep / "2", sweep / "0", sweep / "2"], tmp_path / "o2", plots=False)
    assert [r.run for r in report.rows] == ["2", "0"]  # argument order, each run once


def test_formatting() -> None:
    assert reports.fmt_duration(None) == "-"
    assert reports.fmt_duration(6.04) == "6.0s"
    assert reports.fmt_duration(316) == "5m 16s"
    assert reports.fmt_duration(3 * 3600 + 125) == "3h 02m"
    assert reports.fmt_speed(1234.4) == "1,234" and reports.fmt_speed(7.03) == "7.0"
    assert reports.fmt_pct(1.234, signed=True) == "+1.23" and reports.fmt_pct(None) == "-"
    assert reports.short_name("x" * 50, 11) == "xxxxx…xxxxx"


# ----------------------------------------------------------------------------- errors
def one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        reports.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("i2e-report: error: ")
    return err.removeprefix("i2e-report: error: ")


def test_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert one_line_error(capsys, [str(tmp_path / "missing")]) == f"'{tmp_path / 'missing'}' does not exist"
    (tmp_path / "empty").mkdir()
    assert "no runs in" in one_line_error(capsys, [str(tmp_path / "empty")])
    bad = write_run(tmp_path / "bad", [epoch_row(1, 10.0)])
    with (bad / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 2, "val_top1": 1\n')
    message = one_line_error(capsys, [str(bad)])
    assert message.startswith(f"'{bad / 'metrics.jsonl'}' line 2 is not a JSON row")
    good = write_run(tmp_path / "good", [epoch_row(1, 10.0)])
    (tmp_path / "a_file").write_text("")
    message = one_line_error(capsys, [str(good), "--out", str(tmp_path / "a_file" / "report")])
    assert message.startswith(f"cannot write to --out '{tmp_path / 'a_file' / 'report'}'")


def test_console_script_error_has_no_traceback(tmp_path: Path) -> None:
    result = report_cli("nowhere", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "i2e-report: error: 'nowhere' does not exist\n"


def test_override_spellings_are_compared_by_value(tmp_path: Path) -> None:
    """A -m sweep writes ``trainer.progress=False`` where a single run keeps ``false``."""
    write_run(
        tmp_path / "a", [epoch_row(1, 1.0)], overrides=["trainer.progress=False", "optim.lr=0.10", "x=[1,2]"]
    )
    write_run(
        tmp_path / "b", [epoch_row(1, 2.0)], overrides=["trainer.progress=false", "optim.lr=0.1", "x=[1,2]"]
    )
    report = reports.build_report([tmp_path / "a", tmp_path / "b"], tmp_path / "out", plots=False)
    assert report.common == {"trainer.progress": "false", "optim.lr": "0.1", "x": "[1,2]"}
    assert [r.overrides for r in report.rows] == ["", ""]
