"""The project's jobs as functions of a composed Hydra config; the scripts in src/ only call these."""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import time
from pathlib import Path

import hydra
import lightning as L
import omegaconf
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard.summary import hparams

from resnet_onecycle.errors import ConfigError

log = logging.getLogger(__name__)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_config(cfg: DictConfig) -> None:
    """Refuse values that cannot work before any data is read or any model built."""
    positive = {  # key: (whole numbers only, the recipe's value as an example)
        "trainer.max_epochs": (True, 40),
        "data.batch_size": (True, 512),
        "model.scheduler.max_lr": (False, 0.02),
        "model.net.width": (False, 1.0),
        "model.scheduler.peak_epoch": (False, 5),
    }
    for key, (whole, example) in positive.items():
        value = OmegaConf.select(cfg, key)
        if not is_number(value) or (whole and not isinstance(value, int)) or value <= 0:
            what = "a whole number" if whole else "a number"
            raise ConfigError(f"{key}={value!r} must be {what} greater than 0, e.g. {key}={example}.")
    epochs, peak = cfg.trainer.max_epochs, cfg.model.scheduler.peak_epoch
    if peak >= epochs:
        raise ConfigError(
            f"model.scheduler.peak_epoch={peak} must be smaller than trainer.max_epochs={epochs}: "
            "the one-cycle LR needs epochs after its peak to come down. Lower peak_epoch or raise max_epochs."
        )
    ckpt = cfg.get("ckpt_path")
    if ckpt is not None and not Path(ckpt).is_file():
        raise ConfigError(f"ckpt_path={ckpt!r}: no such checkpoint file.")
    if cfg.get("test_ckpt") not in ("last", "best"):
        raise ConfigError(f"test_ckpt={cfg.get('test_ckpt')!r} must be `last` or `best`.")


def device_name(trainer: L.Trainer) -> str:
    device = trainer.strategy.root_device
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads, {platform.machine()})"


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None
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


def train(cfg: DictConfig) -> dict:
    """Fit, then test; writes checkpoints, TensorBoard events and metrics.json into the run dir."""
    check_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)

    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    module: L.LightningModule = hydra.utils.instantiate(cfg.model)
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=instantiate_group(cfg.get("callbacks")), logger=loggers)

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    fit_time = time.perf_counter() - start

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
    if cfg.get("test"):
        ckpt = "best" if cfg.test_ckpt == "best" and trainer.checkpoint_callback else None
        (results,) = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt)
        metrics.update({k: float(v) for k, v in results.items()})

    summary = {
        "status": "completed",
        **metrics,
        "epochs": trainer.current_epoch,
        "global_steps": trainer.global_step,
        "fit_time_s": round(fit_time, 2),
        "wall_time_s": round(time.perf_counter() - start, 2),
        "device": device_name(trainer),
        "precision": str(trainer.precision),
        "data_source": str(cfg.data.source),
        "train_images": len(datamodule.splits["train"][1]),
        "test_images": len(datamodule.splits["test"][1]),
        **provenance(cfg),
    }
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                write_hparams(logger, flat_hparams(cfg), metrics)
        log.info("test/acc %.4f  wall time %.1f s  -> %s", metrics.get("test/acc", float("nan")), summary["wall_time_s"], output_dir)
    return summary
