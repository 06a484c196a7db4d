"""What a run records about itself: provenance, metrics.json, hparams, and the config checks."""

from __future__ import annotations

import json
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

from resnet_onecycle.data.sources import LAYOUTS
from resnet_onecycle.errors import ConfigError, DataSourceError


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_config(cfg: DictConfig) -> None:
    """Refuse values that cannot work before any data is read or any model built."""
    positive = {  # key: (whole numbers only, the recipe's value as an example)
        "trainer.max_epochs": (True, 40),
        "data.batch_size": (True, 512),
        "model.scheduler.max_lr": (False, 0.02),  # or `auto`: the LR range test picks it
        "model.net.width": (False, 1.0),
        "model.scheduler.peak_epoch": (False, 5),
    }
    for key, (whole, example) in positive.items():
        value = OmegaConf.select(cfg, key)
        if key == "model.scheduler.max_lr" and value == "auto":
            continue
        if not is_number(value) or (whole and not isinstance(value, int)) or value <= 0:
            what = "a whole number" if whole else "a number"
            also = " (or auto)" if key == "model.scheduler.max_lr" else ""
            raise ConfigError(f"{key}={value!r} must be {what} greater than 0{also}, e.g. {key}={example}.")
    epochs, peak = cfg.trainer.max_epochs, cfg.model.scheduler.peak_epoch
    if peak >= epochs:
        raise ConfigError(
            f"model.scheduler.peak_epoch={peak} must be smaller than trainer.max_epochs={epochs}: "
            "the one-cycle LR needs epochs after its peak to come down. Lower peak_epoch or raise max_epochs."
        )
    if OmegaConf.select(cfg, "trainer.sync_batchnorm") and OmegaConf.select(cfg, "trainer.accelerator") == "cpu":
        raise ConfigError("trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm is CUDA-only); "
                          "with trainer.accelerator=cpu set trainer.sync_batchnorm=false.")
    source = str(OmegaConf.select(cfg, "data.source"))
    if source != "download" and not Path(source).expanduser().exists():
        where = Path(source).expanduser().resolve()
        raise DataSourceError(f"data.source={source!r}: no such file or folder ({where}). {LAYOUTS}")
    ckpt = cfg.get("ckpt_path")
    if ckpt is not None and not Path(ckpt).is_file():
        raise ConfigError(f"ckpt_path={ckpt!r}: no such checkpoint file.")
    if "test_ckpt" in cfg and cfg.test_ckpt not in ("last", "best"):
        raise ConfigError(f"test_ckpt={cfg.get('test_ckpt')!r} must be `last` or `best`.")


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


def instantiate_group(cfg: DictConfig | None) -> list:
    """Callbacks or loggers: every entry with a `_target_` (null entries switch one off)."""
    return [hydra.utils.instantiate(c) for c in (cfg or {}).values() if c is not None and "_target_" in c]


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
    writer = logger.experiment._get_file_writer()
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
        "data_source": str(cfg.data.source),
        "train_images": len(datamodule.splits["train"][1]) if datamodule.splits else None,
        "test_images": len(datamodule.splits["test"][1]) if datamodule.splits else None,
        "resumed_from": cfg.get("ckpt_path"),
        "tta": OmegaConf.select(cfg, "model.tta", default="none"),
        "averaged_weights": any(isinstance(c, WeightAveraging) for c in trainer.callbacks),
        **provenance(cfg),
    }


def write_metrics(output_dir: Path, summary: dict) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
