"""A sweep at a glance: one row per job with its swept values, accuracy, loss, time and status,
written by the Hydra callback `SweepSummary` when a multirun ends."""

from __future__ import annotations

import csv
import itertools
import json
import math
import sys
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

COLUMNS = ("status", "test_acc", "best_acc", "test_loss", "wall_time_s")


def parse(value: str):
    """'0.02' -> 0.02, '40' -> 40, anything else stays text."""
    try:
        loaded = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    return loaded if isinstance(loaded, (int, float, bool, str)) else value


def collect(sweep_dir: Path) -> tuple[list[str], list[dict]]:
    """(swept keys, rows): a row per job dir (0, 1, ...) with its overrides and final metrics."""
    jobs = sorted((p for p in Path(sweep_dir).iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    rows = []
    for job in jobs:
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
        values = dict(o.split("=", 1) for o in overrides if "=" in o)
        metrics_file = job / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        rows.append({
            "job": int(job.name),
            "overrides": {k.lstrip("+~"): parse(v) for k, v in values.items()},
            "status": metrics.get("status", "failed"),
            "test_acc": metrics.get("test/acc"),
            "best_acc": metrics.get("val/acc_best"),
            "test_loss": metrics.get("test/loss"),
            "wall_time_s": metrics.get("wall_time_s"),
            "error": (metrics.get("error") or ("" if metrics else "no metrics.json: the job died")).strip().splitlines()[-1:],
            "dir": job.name,
            "mlflow_run": mlflow_run_of(job),
        })
    keys = list(dict.fromkeys(k for r in rows for k in r["overrides"]))  # in command-line order
    swept = [k for k in keys if len({repr(r["overrides"].get(k)) for r in rows}) > 1] or keys
    return swept, rows


def mlflow_run_of(job: Path) -> str:
    """The MLflow run a job logged to (logger=mlflow), or ""."""
    try:
        return json.loads((job / "mlflow_run.json").read_text())["run_id"]
    except (OSError, ValueError, KeyError):
        return ""


def cell(value, digits: int = 4) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}f}"
    return "" if value is None else str(value)


def metric_cells(row: dict) -> list[str]:
    return [row["status"], cell(row["test_acc"]), cell(row["best_acc"]), cell(row["test_loss"]), cell(row["wall_time_s"], 1)]


def write_csv(path: Path, swept: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        mlflow = any(r["mlflow_run"] for r in rows)
        writer.writerow(["job", *swept, *COLUMNS, "error", *(["mlflow_run"] if mlflow else [])])
        for r in rows:
            writer.writerow([r["job"], *(r["overrides"].get(k) for k in swept), *metric_cells(r), " ".join(r["error"]),
                             *([r["mlflow_run"]] if mlflow else [])])


def write_markdown(path: Path, sweep_dir: Path, swept: list[str], rows: list[dict]) -> None:
    done = [r for r in rows if r["status"] == "completed" and r["test_acc"] is not None]
    lines = [f"# Sweep summary: {sweep_dir}", "",
             f"{len(rows)} jobs, {len(done)} completed, swept: {', '.join(swept) or 'nothing'}.", ""]
    if done:
        best = max(done, key=lambda r: r["test_acc"])
        setting = ", ".join(f"{k}={best['overrides'].get(k)}" for k in swept)
        lines += [f"Best final test accuracy: **{best['test_acc']:.4f}** (job {best['job']}: {setting}).", ""]
    headings = [*swept, "status", "final test acc", "best test acc", "final test loss", "wall time (s)"]
    lines += ["| job | " + " | ".join(headings) + " |",
              "| " + " | ".join(["---"] * (len(swept) + 6)) + " |"]
    for r in rows:
        lines.append("| " + " | ".join([str(r["job"]), *(str(r["overrides"].get(k, "")) for k in swept),
                                         *metric_cells(r)]) + " |")
    failed = [r for r in rows if r["status"] != "completed"]
    if failed:
        lines += ["", "Jobs that did not complete:", ""]
        lines += [f"- job {r['job']} ({r['status']}): {' '.join(r['error'])}" for r in failed]
    lines += ["", "![final test accuracy](summary.png)"]
    path.write_text("\n".join(lines) + "\n")


def plot(path: Path, swept: list[str], rows: list[dict]) -> None:
    """Final test accuracy against the first swept key, one line per setting of the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    x_key, others = (swept[0], swept[1:]) if swept else ("job", [])
    done = [r for r in rows if r["status"] == "completed" and r["test_acc"] is not None]
    x_of = (lambda r: r["job"]) if x_key == "job" else (lambda r: r["overrides"].get(x_key))
    numeric = all(isinstance(x_of(r), (int, float)) for r in done)
    order = lambda r: x_of(r) if numeric else str(x_of(r))  # noqa: E731
    group = lambda r: tuple(r["overrides"].get(k) for k in others)  # noqa: E731
    if len({group(r) for r in done}) == len(done) > 1:  # a random search: no two jobs share the others
        others, group = [], (lambda r: ())
    for setting, members in itertools.groupby(sorted(done, key=lambda r: (repr(group(r)), order(r))), key=group):
        members = list(members)
        label = ", ".join(f"{k}={v}" for k, v in zip(others, setting)) or None
        ax.plot([x_of(r) if numeric else str(x_of(r)) for r in members], [r["test_acc"] for r in members],
                "-o" if others or len(swept) <= 1 else "o", label=label)
    if numeric and done and min(x_of(r) for r in done) > 0 and max(x_of(r) for r in done) / min(x_of(r) for r in done) >= 10:
        ax.set_xscale("log")
    ax.set_xlabel(x_key)
    ax.set_ylabel("final test accuracy")
    failed = len(rows) - len(done)
    ax.set_title("sweep: final test accuracy" + (f" ({failed} job(s) not completed)" if failed else ""))
    ax.grid(alpha=0.3)
    if others:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_summary(sweep_dir: Path) -> tuple[list[str], list[dict]]:
    sweep_dir = Path(sweep_dir)
    swept, rows = collect(sweep_dir)
    if rows:
        write_csv(sweep_dir / "summary.csv", swept, rows)
        write_markdown(sweep_dir / "summary.md", sweep_dir, swept, rows)
        plot(sweep_dir / "summary.png", swept, rows)
    return swept, rows


class SweepSummary(Callback):
    """When a multirun ends: summary.csv, summary.md and summary.png in the sweep dir.

    The process then exits with 1 if any job did not complete, so a script sees the failure.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        _, rows = write_summary(sweep_dir)
        failed = [r["job"] for r in rows if r["status"] != "completed"]
        print(f"Sweep summary: {sweep_dir / 'summary.md'} ({len(rows)} jobs, {len(failed)} not completed)")
        if failed:
            print(f"error: jobs {failed} did not complete; see {sweep_dir / 'summary.md'}", file=sys.stderr)
            sys.exit(1)
