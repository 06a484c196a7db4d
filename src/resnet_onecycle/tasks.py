"""The project's jobs as functions of a composed Hydra config; the scripts in src/ only call these."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from resnet_onecycle.analysis import Analysis
from resnet_onecycle.errors import ConfigError
from resnet_onecycle.framework import compile_counters
from resnet_onecycle.lr_find import plot_lr_find, run_lr_find
from resnet_onecycle.module import CUDA_GRAPH_MODES, compile_mode
from resnet_onecycle.resume import (
    DivergenceError,
    RunGuard,
    TrainingInterrupted,
    check_same_schedule,
    resumed_config,
    run_dir_of,
    saved_config,
    with_overrides,
)
from resnet_onecycle.schedule import check_one_cycle
from resnet_onecycle.summary import final_metrics, flat_hparams, provenance, run_summary, write_hparams, write_metrics

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict:
    """Fit, then test and analyze; writes checkpoints, TensorBoard events, pictures, report.md and
    metrics.json into the run dir.

    The summary's status is `completed`, or `interrupted` (SIGINT/SIGTERM: last.ckpt saved, no
    test); a diverged run raises DivergenceError after writing metrics.json with status `diverged`.
    With `model.scheduler.max_lr=auto` the LR range test runs first and picks the max LR.
    """
    if cfg.get("resume"):
        cfg = resumed_config(cfg, *command_line())
    check_same_schedule(cfg)
    check_task_keys(cfg)
    check_one_cycle(**cfg.model.scheduler, epochs=cfg.trainer.max_epochs)
    output_dir = Path(cfg.paths.output_dir)
    datamodule, loggers = data_and_loggers(cfg)
    found = pick_max_lr(cfg, datamodule, output_dir, loggers) if cfg.model.scheduler.max_lr == "auto" else {}
    module: L.LightningModule = hydra.utils.instantiate(cfg.model)
    analysis = analysis_of(cfg, "Training run report", events_dir=output_dir / "tensorboard", enabled=cfg.get("test"))
    # The guard last: an interrupted run's checkpoint is saved once every other callback has seen
    # the step (the weight average included).
    callbacks = sorted(instantiate_group(cfg.get("callbacks")), key=lambda callback: isinstance(callback, RunGuard))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=[analysis, *callbacks], logger=loggers)

    compiled_before = compile_counters()
    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    except DivergenceError as error:
        if trainer.is_global_zero:
            write_metrics(output_dir, {**run_summary(trainer, datamodule, cfg, "diverged", start), "error": str(error)})
        raise
    except TrainingInterrupted as stop:
        summary = {**run_summary(trainer, datamodule, cfg, "interrupted", start), **found,
                   "signal": stop.signal_name, "checkpoint": str(stop.checkpoint),
                   "resume": f"python src/train.py resume={output_dir}"}
        if trainer.is_global_zero:
            write_metrics(output_dir, summary)
        return summary
    fit_time = time.perf_counter() - start
    compile_record = compile_report(cfg, compiled_before, trainer.strategy.root_device)

    if cfg.get("test"):
        if cfg.test_ckpt == "best" and trainer.checkpoint_callback:
            trainer.strategy.barrier("checkpoints written")  # rank 0 waited for its background writes
            # The file's own weights (with callbacks=ema, the average's): test(ckpt_path=) would let
            # Lightning's weight-averaging callback put the raw weights back.
            load_weights(module, trainer.checkpoint_callback.best_model_path, cfg.model.net.width)
        trainer.test(module, datamodule=datamodule)
    summary = {**run_summary(trainer, datamodule, cfg, "completed", start), **analysis.fit_metrics,
               **final_metrics(trainer), "fit_time_s": round(fit_time, 2), **compile_record, **found}
    tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
    if trainer.is_global_zero and tensorboard is not None:
        metrics = {k: v for k, v in summary.items() if k.startswith(("train/", "val/", "test/"))}
        write_hparams(tensorboard, {**flat_hparams(cfg), **provenance(cfg)}, metrics)
    result = (f"test/acc {summary['test/acc']:.4f}" if "test/acc" in summary
              else f"val/acc {summary.get('val/acc', float('nan')):.4f} (test=false: no test)")
    return finish(trainer, analysis, summary, output_dir, start, result)


def evaluate(cfg: DictConfig) -> dict:
    """Test a checkpoint and write the same pictures and report as training, into a new eval dir.

    The model and data configs, the epochs and the seed are the checkpoint's run's (its
    .hydra/config.yaml) when it has one, with this command's key=value overrides on top.
    """
    ckpt_path = None if OmegaConf.is_missing(cfg, "ckpt_path") else cfg.ckpt_path
    if not ckpt_path or not Path(ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={ckpt_path!r}: no such checkpoint file; give ckpt_path=<run>/checkpoints/last.ckpt.")
    output_dir = Path(cfg.paths.output_dir)
    run = run_dir_of(ckpt_path)
    if run is not None:
        saved = saved_config(run)
        with open_dict(cfg):
            cfg.model, cfg.data = with_overrides(saved, cfg, *command_line(), keys=("model", "data"))
            # the recipe the checkpoint was trained with, for report.md and the saved config
            cfg.trainer.max_epochs, cfg.seed = saved.trainer.max_epochs, saved.seed
        if (output_dir / ".hydra").is_dir():  # Hydra saved the config composed for eval.py
            OmegaConf.save(cfg, output_dir / ".hydra" / "config.yaml")
    datamodule, loggers = data_and_loggers(cfg)
    module = hydra.utils.instantiate(cfg.model)
    checkpoint = load_weights(module, ckpt_path, cfg.model.net.width)
    averaged = "current_model_state" in checkpoint  # Lightning's weight averaging keeps the raw weights there
    analysis = analysis_of(cfg, f"Evaluation of {ckpt_path}", events_dir=(run or output_dir) / "tensorboard",
                           weights="exponential moving average (the checkpoint's averaged weights)" if averaged else None)
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers, callbacks=[analysis], enable_checkpointing=False)
    start = time.perf_counter()
    (results,) = trainer.test(module, datamodule=datamodule)
    metrics = {k: float(v) for k, v in results.items()}
    summary = {"status": "completed", **metrics, "ckpt_path": str(ckpt_path), "epochs": checkpoint.get("epoch", -1) + 1,
               "global_steps": checkpoint.get("global_step"), "test_images": len(datamodule.splits["test"][1]),
               "tta": module.hparams.tta, "averaged_weights": averaged, "data_source": datamodule.source, **provenance(cfg)}
    return finish(trainer, analysis, summary, output_dir, start, f"test/acc {metrics.get('test/acc', float('nan')):.4f}")


def find_lr(cfg: DictConfig) -> dict:
    """The LR range test alone: lr_find.png and lr_find.json in the run dir, and the override to use."""
    output_dir = Path(cfg.paths.output_dir)
    datamodule, loggers = data_and_loggers(cfg)
    result = lr_range_test(cfg, datamodule, output_dir, loggers)
    for logger in loggers:
        logger.save()
    print(f"Suggested max LR ({result['method']}): model.scheduler.max_lr={result['suggested_max_lr']:.4g}")
    print(f"Plot: {output_dir / 'lr_find.png'}")
    return result


# --- what the tasks share ----------------------------------------------------------------------


def command_line() -> tuple[list[str], set[str]]:
    """This command's overrides and the names of the config groups, from Hydra."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    return list(hydra_cfg.overrides.task), set(hydra_cfg.runtime.choices)


def check_task_keys(cfg: DictConfig) -> None:
    """The task's own keys (the components check theirs when they are built)."""
    ckpt = cfg.get("ckpt_path")
    if ckpt is not None and not Path(ckpt).is_file():
        raise ConfigError(f"ckpt_path={ckpt!r}: no such checkpoint file.")
    if cfg.get("test_ckpt") not in ("last", "best"):
        raise ConfigError(f"test_ckpt={cfg.get('test_ckpt')!r} must be `last` or `best`.")
    if cfg.trainer.get("sync_batchnorm") and cfg.trainer.get("accelerator") == "cpu":
        raise ConfigError("trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm is CUDA-only); "
                          "with trainer.accelerator=cpu set trainer.sync_batchnorm=false.")


def instantiate_group(cfg: DictConfig | None) -> list:
    """Callbacks or loggers: every entry with a `_target_` (null entries switch one off)."""
    return [hydra.utils.instantiate(c) for c in (cfg or {}).values() if c is not None and "_target_" in c]


def data_and_loggers(cfg: DictConfig) -> tuple[L.LightningDataModule, list]:
    """Seeded, the DataModule (it checks its source before anything is read) and the loggers."""
    L.seed_everything(cfg.seed, workers=True)
    return hydra.utils.instantiate(cfg.data), instantiate_group(cfg.get("logger"))


def analysis_of(cfg: DictConfig, title: str, events_dir: Path, weights: str | None = None,
                enabled: bool = True) -> Analysis:
    settings = cfg.analysis
    return Analysis(cfg.paths.output_dir, misclassified=settings.misclassified, gradcam_layer=settings.gradcam_layer,
                    title=title, events_dir=events_dir, weights=weights, enabled=bool(settings.enabled and enabled))


def finish(trainer: L.Trainer, analysis: Analysis, summary: dict, output_dir: Path, start: float, result: str) -> dict:
    """metrics.json, on the first process: the summary, the analysis' per-class accuracy, the wall time."""
    if analysis.per_class_accuracy is not None:
        summary["per_class_accuracy"] = analysis.per_class_accuracy
    summary["wall_time_s"] = round(time.perf_counter() - start, 2)
    if trainer.is_global_zero:
        write_metrics(output_dir, summary)
        log.info("%s  wall time %.1f s  -> %s", result, summary["wall_time_s"], output_dir)
    return summary


def lr_range_test(cfg: DictConfig, datamodule, output_dir: Path, loggers=()) -> dict:
    """Run the LR range test; write lr_find.png and lr_find.json into `output_dir`."""
    import matplotlib.pyplot as plt

    result = run_lr_find(cfg, datamodule, str(output_dir))
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "lr_find.json").write_text(json.dumps(result, indent=2) + "\n")
    fig = plot_lr_find(result)
    fig.savefig(output_dir / "lr_find.png")
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure("lr_find", fig, close=False)
    plt.close(fig)
    if result["suggested_max_lr"] is None:
        raise ConfigError(
            f"the LR range test stopped after {len(result['lr'])} steps, too few for a suggestion: "
            "raise lr_find.num_training or lr_find.early_stop_threshold (see lr_find.png)."
        )
    return result


def pick_max_lr(cfg: DictConfig, datamodule, output_dir: Path, loggers) -> dict:
    """For `model.scheduler.max_lr=auto`: the range test's suggestion goes into `cfg`; the record for metrics.json."""
    found = lr_range_test(cfg, datamodule, output_dir, loggers)
    with open_dict(cfg):
        cfg.model.scheduler.max_lr = found["suggested_max_lr"]
    log.info("LR range test: model.scheduler.max_lr=%.4g", cfg.model.scheduler.max_lr)
    L.seed_everything(cfg.seed, workers=True)  # the same initial weights as a run given this max LR
    return {"lr_find": {"suggested_max_lr": found["suggested_max_lr"], "plot": "lr_find.png"}}


def compile_report(cfg: DictConfig, before: dict, device: torch.device) -> dict:
    """With model.compile on, what torch.compile did during fit, for metrics.json; a warning when
    CUDA graphs were asked for and skipped (TORCH_LOGS=cudagraphs,perf_hints says why)."""
    if not cfg.model.get("compile"):
        return {}
    counts = compile_counters(since=before)
    mode = compile_mode(cfg.model.compile, device.type)
    if device.type == "cuda" and counts.get("cudagraph_skips") and mode in CUDA_GRAPH_MODES:
        log.warning("model.compile=%s: CUDA graphs were skipped %d times, so those graphs ran without them; "
                    "TORCH_LOGS=cudagraphs,perf_hints shows why.", cfg.model.compile, counts["cudagraph_skips"])
    return {"compile": {"mode": mode, **counts}}


def load_weights(module: L.LightningModule, ckpt_path: str, width) -> dict:
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        state = checkpoint["state_dict"]
    except Exception as error:  # noqa: BLE001 - any failure means "not one of our checkpoints"
        raise ConfigError(f"ckpt_path={ckpt_path!r} is not a Lightning checkpoint of this project ({error}).") from error
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        prep = state.get("net.prep.0.weight")  # the first conv: 64 x width output channels
        theirs = prep.shape[0] / 64 if prep is not None and prep.ndim == 4 else None
        if theirs is not None and prep.shape[0] != max(1, round(64 * width)):
            raise ConfigError(
                f"ckpt_path={ckpt_path!r} holds a MixedResNet of width {theirs:g} ({prep.shape[0]} channels in its first "
                f"layer), and this config builds width {width}: give model.net.width={theirs:g}."
            ) from error
        first = str(error).strip().splitlines()[:3]
        raise ConfigError(
            f"ckpt_path={ckpt_path!r} holds another model than this config's (model.net.width={width}): "
            + " ".join(first)
        ) from error
    return checkpoint
