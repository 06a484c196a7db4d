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

from resnet_onecycle.analysis import analyze
from resnet_onecycle.callbacks import DivergenceError, RunGuard, TrainingInterrupted
from resnet_onecycle.data.sources import CLASSES
from resnet_onecycle.errors import ConfigError
from resnet_onecycle.lr_find import plot_lr_find, run_lr_find
from resnet_onecycle.module import CUDA_GRAPH_MODES, compile_counters, compile_mode
from resnet_onecycle.records import (
    check_config,
    final_metrics,
    flat_hparams,
    instantiate_group,
    provenance,
    run_summary,
    write_hparams,
    write_metrics,
)
from resnet_onecycle.resume import check_same_schedule, resumed_config, run_dir_of, saved_config, with_overrides

log = logging.getLogger(__name__)


def command_line() -> tuple[list[str], set[str]]:
    """This command's overrides and the names of the config groups, from Hydra."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    return list(hydra_cfg.overrides.task), set(hydra_cfg.runtime.choices)


def run_config(cfg: DictConfig) -> DictConfig:
    """The config this run goes on with: for resume=<run dir>, the one that run saved."""
    if not cfg.get("resume"):
        return cfg
    return resumed_config(cfg, *command_line())


def tensorboard_of(trainer: L.Trainer) -> TensorBoardLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


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


def analyze_run(cfg: DictConfig, module, datamodule, output_dir: Path, metrics: dict, device, loggers, step: int,
                title: str, run_dir: Path) -> dict:
    """The pictures and report into `output_dir`; the curves come from `run_dir`'s training events."""
    images, labels = datamodule.splits["test"]
    return analyze(module.net, images, labels, CLASSES, output_dir, cfg.analysis, cfg, metrics, device, loggers, step,
                   tensorboard_dir=run_dir / "tensorboard", title_text=title, classifier=module.classifier)


def train(cfg: DictConfig) -> dict:
    """Fit, then test and analyze; writes checkpoints, TensorBoard events, pictures, report.md and
    metrics.json into the run dir.

    The summary's status is `completed`, or `interrupted` (SIGINT/SIGTERM: last.ckpt saved, no
    test); a diverged run raises DivergenceError after writing metrics.json with status `diverged`.
    With `model.scheduler.max_lr=auto` the LR range test runs first and picks the max LR.
    """
    cfg = run_config(cfg)
    check_config(cfg)
    check_same_schedule(cfg)
    output_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)

    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    loggers = instantiate_group(cfg.get("logger"))
    found = {}
    if cfg.model.scheduler.max_lr == "auto":
        found = lr_range_test(cfg, datamodule, output_dir, loggers)
        with open_dict(cfg):
            cfg.model.scheduler.max_lr = found["suggested_max_lr"]
        log.info("LR range test: model.scheduler.max_lr=%.4g", cfg.model.scheduler.max_lr)
        L.seed_everything(cfg.seed, workers=True)  # the same initial weights as a run given this max LR
    module: L.LightningModule = hydra.utils.instantiate(cfg.model)
    # The guard last: an interrupted run's checkpoint is saved once every other callback has seen
    # the step (the weight average included).
    callbacks = sorted(instantiate_group(cfg.get("callbacks")), key=lambda callback: isinstance(callback, RunGuard))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    lr_find_record = {"lr_find": {"suggested_max_lr": found["suggested_max_lr"], "plot": "lr_find.png"}} if found else {}

    compiled_before = compile_counters()
    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    except DivergenceError as error:
        if trainer.is_global_zero:
            write_metrics(output_dir, {**run_summary(trainer, datamodule, cfg, "diverged", start), "error": str(error)})
        raise
    except TrainingInterrupted as stop:
        summary = {
            **run_summary(trainer, datamodule, cfg, "interrupted", start), **lr_find_record,
            "signal": stop.signal_name,
            "checkpoint": str(stop.checkpoint),
            "resume": f"python src/train.py resume={output_dir}",
        }
        if trainer.is_global_zero:
            write_metrics(output_dir, summary)
        return summary
    fit_time = time.perf_counter() - start
    compile_record = compile_report(cfg, compiled_before, trainer.strategy.root_device)

    fit_metrics = final_metrics(trainer)  # test() replaces the trainer's metrics with its own
    if cfg.get("test"):
        if cfg.test_ckpt == "best" and trainer.checkpoint_callback:
            trainer.strategy.barrier("checkpoints written")  # rank 0 waited for its background writes
            # The file's own weights (with callbacks=ema, the average's): test(ckpt_path=) would let
            # Lightning's weight-averaging callback put the raw weights back.
            load_weights(module, trainer.checkpoint_callback.best_model_path, cfg.model.net.width)
        trainer.test(module, datamodule=datamodule)
    summary = {**run_summary(trainer, datamodule, cfg, "completed", start), **fit_metrics,
               "fit_time_s": round(fit_time, 2), **compile_record, **lr_find_record}
    if trainer.is_global_zero:
        metrics = {k: v for k, v in summary.items() if k.startswith(("train/", "val/", "test/"))}
        tensorboard = tensorboard_of(trainer)
        if tensorboard is not None:
            write_hparams(tensorboard, {**flat_hparams(cfg), **provenance(cfg)}, metrics)
        if cfg.analysis.enabled and cfg.get("test"):
            analysis = analyze_run(cfg, module, datamodule, output_dir, metrics, trainer.strategy.root_device,
                                   trainer.loggers, trainer.global_step, "Training run report", output_dir)
            summary["per_class_accuracy"] = analysis["per_class_accuracy"]
        summary["wall_time_s"] = round(time.perf_counter() - start, 2)
        write_metrics(output_dir, summary)
        result = (f"test/acc {summary['test/acc']:.4f}" if "test/acc" in summary
                  else f"val/acc {summary.get('val/acc', float('nan')):.4f} (test=false: no test)")
        log.info("%s  wall time %.1f s  -> %s", result, summary["wall_time_s"], output_dir)
    return summary


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


def find_lr(cfg: DictConfig) -> dict:
    """The LR range test alone: lr_find.png and lr_find.json in the run dir, and the override to use."""
    check_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    loggers = instantiate_group(cfg.get("logger"))
    result = lr_range_test(cfg, datamodule, output_dir, loggers)
    for logger in loggers:
        logger.save()
    print(f"Suggested max LR ({result['method']}): model.scheduler.max_lr={result['suggested_max_lr']:.4g}")
    print(f"Plot: {output_dir / 'lr_find.png'}")
    return result


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


def evaluate(cfg: DictConfig) -> dict:
    """Test a checkpoint and write the same pictures and report as training, into a new eval dir.

    The model and data configs are the checkpoint's run's (its .hydra/config.yaml) when it has
    one, with this command's key=value overrides on top.
    """
    ckpt_path = None if OmegaConf.is_missing(cfg, "ckpt_path") else cfg.ckpt_path
    if not ckpt_path or not Path(ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={ckpt_path!r}: no such checkpoint file; give ckpt_path=<run>/checkpoints/last.ckpt.")
    run = run_dir_of(ckpt_path)
    if run is not None:
        saved = saved_config(run)
        with open_dict(cfg):
            cfg.model, cfg.data = with_overrides(saved, cfg, *command_line(), keys=("model", "data"))
            if OmegaConf.select(saved, "callbacks.ema"):  # for the report: the weights are an average
                cfg.callbacks = {"ema": saved.callbacks.ema}
            # the recipe the checkpoint was trained with, for report.md and the saved config
            cfg.trainer.max_epochs, cfg.seed = saved.trainer.max_epochs, saved.seed
    check_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    if run is not None and (output_dir / ".hydra").is_dir():  # Hydra saved the config composed for eval.py
        OmegaConf.save(cfg, output_dir / ".hydra" / "config.yaml")
    L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    module = hydra.utils.instantiate(cfg.model)
    checkpoint = load_weights(module, ckpt_path, cfg.model.net.width)
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers, callbacks=[], enable_checkpointing=False)
    start = time.perf_counter()
    (results,) = trainer.test(module, datamodule=datamodule)
    metrics = {k: float(v) for k, v in results.items()}
    summary = {"status": "completed", **metrics, "ckpt_path": str(ckpt_path), "epochs": checkpoint.get("epoch", -1) + 1,
               "global_steps": checkpoint.get("global_step"), "test_images": len(datamodule.splits["test"][1]),
               "tta": cfg.model.get("tta", "none"), "averaged_weights": "current_model_state" in checkpoint,
               "data_source": str(cfg.data.source), **provenance(cfg)}
    if trainer.is_global_zero:
        analysis = analyze_run(cfg, module, datamodule, output_dir, metrics, trainer.strategy.root_device,
                               trainer.loggers, checkpoint.get("global_step") or 0, f"Evaluation of {ckpt_path}",
                               run if run is not None else output_dir)
        summary["per_class_accuracy"] = analysis["per_class_accuracy"]
        summary["wall_time_s"] = round(time.perf_counter() - start, 2)
        write_metrics(output_dir, summary)
        log.info("test/acc %.4f -> %s", metrics.get("test/acc", float("nan")), output_dir)
    return summary
