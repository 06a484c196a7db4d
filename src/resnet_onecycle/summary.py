"""What a run writes about itself: metrics.json, its provenance, and its HParams entry in TensorBoard."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

import hydra
import lightning as L
import omegaconf
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard.summary import hparams

from resnet_onecycle.files import write_text
from resnet_onecycle.framework import tensorboard_writer
from resnet_onecycle.rundir import status_of


def device_name(trainer: L.Trainer) -> str:
    device = trainer.strategy.root_device
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads, {platform.machine()})"


def git_commit(root: Path = Path(__file__).resolve().parents[2]) -> str | None:
    """The commit the code ran from, with "-dirty" when tracked files differ from it."""
    try:
        git = ["git", "-C", str(root)]
        out = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return None
        changes = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("-dirty" if changes.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(cfg: DictConfig) -> dict:
    return {
        "seed": cfg.get("seed"),
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "hydra": hydra.__version__,
        "omegaconf": omegaconf.__version__,
    }


def flat_hparams(cfg: DictConfig) -> dict:
    """The resolved config as flat `a.b.c` keys, minus paths, for TensorBoard's HParams tab."""
    container = OmegaConf.to_container(cfg, resolve=True)
    flat: dict = {}

    def walk(prefix: str, node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            flat[prefix] = node if isinstance(node, (int, float, str, bool)) else str(node)

    walk("", {k: v for k, v in container.items() if k not in ("paths", "hydra", "callbacks", "logger")})
    return flat


def write_hparams(logger: TensorBoardLogger, params: dict, metrics: dict) -> None:
    """The HParams tab's entry for this run, naming the final metrics already logged as scalars.

    (Lightning's `log_hyperparams(params, metrics)` would log those metrics a second time, at step 0.)
    """
    writer = tensorboard_writer(logger)
    for summary in hparams(params, metrics):
        writer.add_summary(summary)
    writer.flush()


def final_metrics(trainer: L.Trainer) -> dict:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/", "test/"))}


def run_summary(trainer: L.Trainer, datamodule, cfg: DictConfig, status: str, start: float) -> dict:
    return {
        "status": status,
        **final_metrics(trainer),
        "epochs": trainer.current_epoch,
        "global_steps": trainer.global_step,
        "wall_time_s": round(time.perf_counter() - start, 2),
        "device": device_name(trainer),
        "precision": str(trainer.precision),
        "data_source": datamodule.source,
        "train_images": len(datamodule.splits["train"][1]) if datamodule.splits else None,
        "test_images": len(datamodule.splits["test"][1]) if datamodule.splits else None,
        "resumed_from": cfg.get("ckpt_path"),
        "tta": trainer.lightning_module.hparams.tta,
        "averaged_weights": any(isinstance(c, WeightAveraging) for c in trainer.callbacks),
        **provenance(cfg),
    }


def write_metrics(output_dir: Path, summary: dict) -> None:
    """metrics.json, whole or not at all (`files.written_whole`)."""
    write_text(Path(output_dir) / "metrics.json", json.dumps(summary, indent=2) + "\n", "metrics")


def first_process() -> bool:
    """Rank 0 of a run, also before any Trainer exists (Lightning's launchers set these)."""
    return not int(os.environ.get("LOCAL_RANK", 0)) and not int(os.environ.get("NODE_RANK", 0))


def log_hparams(trainer: L.Trainer, cfg: DictConfig, summary: dict) -> None:
    """The run's HParams entry in TensorBoard: its flattened config and provenance, against its final metrics."""
    tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
    if trainer.is_global_zero and tensorboard is not None:
        metrics = {k: v for k, v in summary.items() if k.startswith(("train/", "val/", "test/"))}
        write_hparams(tensorboard, {**flat_hparams(cfg), **provenance(cfg)}, metrics)


def record_failure(output_dir: Path, error: BaseException, detail: str) -> None:
    """metrics.json says the run was refused (bad input) or failed, and why, unless the dir already
    holds a verdict (the task's own, or that of the run a resume continues), which stays as it is;
    `running` is no verdict."""
    from resnet_onecycle.errors import UserError
    from resnet_onecycle.files import WriteError

    if status_of(output_dir) not in (None, "running") or not first_process():
        return
    try:
        write_metrics(output_dir, {"status": error.status if isinstance(error, UserError) else "failed", "error": detail})
    except WriteError:
        pass  # the disk that failed the run: metrics.json still says `running`, i.e. not finished
