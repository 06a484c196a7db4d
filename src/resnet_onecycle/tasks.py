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

from resnet_onecycle.callbacks import DivergenceError, TrainingInterrupted
from resnet_onecycle.data.sources import LAYOUTS
from resnet_onecycle.errors import ConfigError, DataSourceError
from resnet_onecycle.resume import check_same_schedule, resumed_config

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
    source = str(OmegaConf.select(cfg, "data.source"))
    if source != "download" and not Path(source).expanduser().exists():
        raise DataSourceError(f"data.source={source!r}: no such file or folder ({Path(source).expanduser().resolve()}). {LAYOUTS}")
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


def run_config(cfg: DictConfig) -> DictConfig:
    """The config this run goes on with: for resume=<run dir>, the one that run saved."""
    if not cfg.get("resume"):
        return cfg
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    return resumed_config(cfg, list(hydra_cfg.overrides.task), set(hydra_cfg.runtime.choices))


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
        **provenance(cfg),
    }


def write_metrics(output_dir: Path, summary: dict) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")


def train(cfg: DictConfig) -> dict:
    """Fit, then test; writes checkpoints, TensorBoard events and metrics.json into the run dir.

    The summary's status is `completed`, or `interrupted` (SIGINT/SIGTERM: last.ckpt saved, no
    test); a diverged run raises DivergenceError after writing metrics.json with status `diverged`.
    """
    cfg = run_config(cfg)
    check_config(cfg)
    check_same_schedule(cfg)
    output_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)

    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    module: L.LightningModule = hydra.utils.instantiate(cfg.model)
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=instantiate_group(cfg.get("callbacks")), logger=loggers)

    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    except DivergenceError as error:
        if trainer.is_global_zero:
            write_metrics(output_dir, {**run_summary(trainer, datamodule, cfg, "diverged", start), "error": str(error)})
        raise
    except TrainingInterrupted as stop:
        summary = {
            **run_summary(trainer, datamodule, cfg, "interrupted", start),
            "signal": stop.signal_name,
            "checkpoint": str(stop.checkpoint),
            "resume": f"python src/train.py resume={output_dir}",
        }
        if trainer.is_global_zero:
            write_metrics(output_dir, summary)
        return summary
    fit_time = time.perf_counter() - start

    fit_metrics = final_metrics(trainer)  # test() replaces the trainer's metrics with its own
    if cfg.get("test"):
        ckpt = "best" if cfg.test_ckpt == "best" and trainer.checkpoint_callback else None
        trainer.test(module, datamodule=datamodule, ckpt_path=ckpt)
    summary = {**run_summary(trainer, datamodule, cfg, "completed", start), **fit_metrics, "fit_time_s": round(fit_time, 2)}
    if trainer.is_global_zero:
        write_metrics(output_dir, summary)
        metrics = {k: v for k, v in summary.items() if k.startswith(("train/", "val/", "test/"))}
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                write_hparams(logger, {**flat_hparams(cfg), **provenance(cfg)}, metrics)
        log.info("test/acc %.4f  wall time %.1f s  -> %s", summary.get("test/acc", float("nan")), summary["wall_time_s"], output_dir)
    return summary
