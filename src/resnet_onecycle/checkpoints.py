"""Checkpoint files: which one to read, and reading one, with an error that names the file and the fix.

Light to import (torch is imported where a file is read), so that the command-line check can
use it before the long imports.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from resnet_onecycle.errors import ConfigError

log = logging.getLogger(__name__)


def read_checkpoint(ckpt_path: str | Path) -> dict:
    """A Lightning checkpoint of this project, weights only; a ConfigError naming the file otherwise."""
    import torch

    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        checkpoint["state_dict"]
    except Exception as error:  # noqa: BLE001 - any failure means "not one of our checkpoints"
        raise ConfigError(unreadable_checkpoint(Path(ckpt_path), error)) from error
    return checkpoint


def checkpoint_problem(path: Path, resume: str | None = None) -> str | None:
    """Why a checkpoint file cannot be read, or None: a quick look (memory-mapped) before any work."""
    import torch

    try:
        torch.load(path, map_location="cpu", mmap=True, weights_only=True)["state_dict"]
    except Exception as error:  # noqa: BLE001 - any failure means the file cannot be resumed from
        return unreadable_checkpoint(path, error, resume)
    return None


def unreadable_checkpoint(path: Path, error: BaseException, resume: str | None = None) -> str:
    """What to say of a checkpoint that does not load: what it is likely to be, and the run's others."""
    path = Path(path)
    reason = (str(error).strip().splitlines() or [""])[0].split(". ")[0][:200]  # its first sentence: torch's run long
    others = [p.name for p in sorted(path.parent.glob("*.ckpt")) if p.name != path.name]
    if others and resume:
        fix = (f"resume from another of the run's checkpoints ({', '.join(others)}): "
               f"python src/train.py resume={resume} ckpt_path={path.parent}/<one of them>")
    elif others:
        fix = f"give another checkpoint beside it ({', '.join(others)}): ckpt_path={path.parent}/<one of them>"
    elif resume:
        fix = f"there is no other checkpoint: delete it, and resume={resume} starts the run again from its beginning"
    else:
        fix = "give another checkpoint, or train one: python src/train.py experiment=cpu_fast"
    return (f"{path} cannot be read as a checkpoint ({type(error).__name__}: {reason}): it was cut short (by a crash or a "
            f"full disk) or is not a checkpoint of this project. To go on, {fix}.")


def resumable_checkpoint(run: Path) -> Path | None:
    """One run's newest complete checkpoint, which resume= continues from. Files are only ever
    moved into place whole, so every `.ckpt` there is complete: usually `last.ckpt`, but a run
    killed while writing it has that epoch's best checkpoint newer."""
    found = sorted((Path(run) / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def latest_trained_checkpoint(log_dir: str | Path) -> Path:
    """For a command given no ckpt_path: the `last.ckpt` of the newest run under `log_dir` whose
    metrics.json says `completed`; else, with a warning naming its status and epoch, the newest of any."""
    found = sorted(Path(log_dir).glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not found:
        raise ConfigError(f"ckpt_path: no checkpoint given and no checkpoints/last.ckpt under {log_dir}; train one "
                          "first (python src/train.py experiment=cpu_fast), or give ckpt_path=<run>/checkpoints/last.ckpt.")
    metrics = {path: run_metrics(path.parent.parent) for path in found}
    chosen = next((path for path in found if metrics[path].get("status") == "completed"), found[0])
    told = metrics[chosen]
    if told.get("status") == "completed":
        accuracy = told.get("test/acc", told.get("val/acc"))
        print(f"ckpt_path not given: using the newest completed run's, {chosen}"
              + (f" ({'test' if 'test/acc' in told else 'val'}/acc {accuracy:.4f})" if accuracy is not None else ""))
    else:
        log.warning("ckpt_path not given and no run under %s completed: using %s, whose run is %s after %s epoch(s); "
                    "its predictions may be poor. Give ckpt_path= to choose.", log_dir, chosen,
                    told.get("status", "of unknown status"), told.get("epochs", "?"))
    return chosen


def run_metrics(run: Path) -> dict:
    """A run dir's metrics.json, or {} where it has none that reads."""
    try:
        found = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def checkpoint_file(ckpt_path) -> Path:
    """`ckpt_path` as a file that exists; a ConfigError naming it otherwise."""
    if not ckpt_path:
        raise ConfigError("ckpt_path is not given: give ckpt_path=<run>/checkpoints/last.ckpt.")
    if not Path(ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={str(ckpt_path)!r}: no such checkpoint file; give ckpt_path=<run>/checkpoints/last.ckpt.")
    return Path(ckpt_path)


def given_or_latest(ckpt_path, log_dir: str | Path) -> Path:
    """`ckpt_path`, or the checkpoint of the newest completed run under the logs dir (`latest_trained_checkpoint`)."""
    return Path(ckpt_path) if ckpt_path else latest_trained_checkpoint(log_dir)
