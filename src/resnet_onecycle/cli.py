"""How the scripts in src/ run a task: errors, exit codes, and sweep jobs that fail."""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from resnet_onecycle.errors import UserError


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def record_failure(output_dir: Path, error: BaseException) -> None:
    """metrics.json says the job failed and why, unless the task already wrote its own verdict."""
    metrics = output_dir / "metrics.json"
    if metrics.exists() and json.loads(metrics.read_text()).get("status") != "completed":
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    detail = str(error) if isinstance(error, UserError) else traceback.format_exc()
    metrics.write_text(json.dumps({"status": "failed", "error": detail}, indent=2) + "\n")


def run(task: Callable[[DictConfig], dict], cfg: DictConfig, result_key: str | None = "test/acc") -> float | None:
    """Run `task(cfg)` for a script and return the sweep's objective (`result_key` of its summary).

    Bad input prints one line and exits with 2; an interrupted run prints how to resume and exits
    with 130 (SIGINT) or 143 (SIGTERM). In a sweep, a job that fails for any reason is marked
    failed in its metrics.json and returns NaN, so the other jobs still run and count.
    """
    try:
        summary = task(cfg)
    except Exception as error:  # noqa: BLE001 - sorted out below
        if in_sweep():
            record_failure(Path(cfg.paths.output_dir), error)
            print(f"error: job {HydraConfig.get().job.num} failed: {error}", file=sys.stderr)
            return float("nan")
        if isinstance(error, UserError):  # the message says it all; a traceback would bury it
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        raise
    if summary.get("status") == "interrupted":
        # One write: under DDP every process prints this into the same stderr at the same moment.
        sys.stderr.write(f"Interrupted by {summary['signal']} at epoch {summary['epochs']}, step "
                         f"{summary['global_steps']}; saved {summary['checkpoint']}.\nResume with: {summary['resume']}\n")
        sys.stderr.flush()
        if not in_sweep():
            sys.exit(130 if summary["signal"] == "SIGINT" else 143)
    return summary.get(result_key) if result_key else None
