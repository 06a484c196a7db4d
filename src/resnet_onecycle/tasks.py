"""The project's jobs, each a function of a composed Hydra config: glue between the components.

train, evaluate and find_lr build their components from the config and run them under a
Lightning Trainer; predict, export and app load a trained model (`inference.Classifier`) and hand
it to the component that does the work.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from resnet_onecycle import compile_cache, trackers
from resnet_onecycle.analysis import Analysis
from resnet_onecycle.callbacks import Throughput
from resnet_onecycle.checkpoints import checkpoint_file, checkpoint_problem, given_or_latest, read_checkpoint
from resnet_onecycle.errors import ConfigError, TrainingInterrupted, check, require_extra
from resnet_onecycle.framework import compile_counters
from resnet_onecycle.lr_find import lr_range_test, pick_max_lr
from resnet_onecycle.resume import DivergenceError, in_run_order
from resnet_onecycle.rundir import check_same_schedule, command_line, resumed_config, run_data_dir, run_dir_of, with_run_config
from resnet_onecycle.schedule import check_one_cycle
from resnet_onecycle.summary import (
    final_metrics,
    first_process,
    flat_hparams,
    log_hparams,
    provenance,
    run_summary,
    write_metrics,
)

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict:
    """Fit, then test and analyze; writes checkpoints, TensorBoard events, pictures, report.md and
    metrics.json into the run dir. With `model.scheduler.max_lr=auto` the LR range test runs
    first and picks the max LR. A stop by signal raises TrainingInterrupted, a non-finite loss
    DivergenceError, each once metrics.json says so."""
    cfg = training_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    datamodule, loggers = data_and_loggers(cfg)
    found = pick_max_lr(cfg, datamodule, output_dir, loggers) if cfg.model.scheduler.max_lr == "auto" else {}
    module: L.LightningModule = hydra.utils.instantiate(cfg.model)
    analysis = Analysis.of(cfg, "Training run report", output_dir / "tensorboard", enabled=cfg.get("test"))
    callbacks = [*in_run_order(instantiate_group(cfg.get("callbacks"))), analysis]
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    start = time.perf_counter()
    timing = fit(trainer, module, datamodule, cfg, start)
    if cfg.get("test"):
        test(trainer, module, datamodule, cfg.test_ckpt)
    summary = {**run_summary(trainer, datamodule, cfg, "completed", start), **analysis.fit_metrics,
               **final_metrics(trainer), **timing, **found,
               **next((c.summary() for c in trainer.callbacks if isinstance(c, Throughput)), {})}
    log_hparams(trainer, cfg, summary)
    return finish(trainer, analysis, summary, cfg, start)


def evaluate(cfg: DictConfig) -> dict:
    """Test a checkpoint and write the same pictures and report as training, into a new eval dir,
    with its run's model and data configs (`rundir.with_run_config`)."""
    from resnet_onecycle.inference import Classifier

    ckpt_path = checkpoint_file(None if OmegaConf.is_missing(cfg, "ckpt_path") else cfg.ckpt_path)
    cfg, output_dir = with_run_config(cfg, str(ckpt_path)), Path(cfg.paths.output_dir)
    if (output_dir / ".hydra").is_dir():  # what eval.py ran with, for the record
        OmegaConf.save(cfg, output_dir / ".hydra" / "config.yaml")
    datamodule, loggers = data_and_loggers(cfg)
    classifier = Classifier.load(ckpt_path, config=cfg)
    module = hydra.utils.instantiate(cfg.model, net=classifier.net)
    analysis = Analysis.of(cfg, f"Evaluation of {ckpt_path}", (run_dir_of(str(ckpt_path)) or output_dir) / "tensorboard",
                           weights="exponential moving average (the checkpoint's averaged weights)"
                           if classifier.averaged else None)
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers, callbacks=[analysis], enable_checkpointing=False)
    start = time.perf_counter()
    (results,) = trainer.test(module, datamodule=datamodule)
    metrics = {k: float(v) for k, v in results.items()}
    summary = {"status": "completed", **metrics, "ckpt_path": str(ckpt_path), "epochs": classifier.epochs,
               "global_steps": classifier.global_step, "test_images": len(datamodule.splits["test"][1]),
               "tta": classifier.tta, "averaged_weights": classifier.averaged, "data_source": datamodule.source,
               **provenance(cfg)}
    return finish(trainer, analysis, summary, cfg, start)


def find_lr(cfg: DictConfig) -> dict:
    """The LR range test alone: lr_find.png and lr_find.json in the run dir, and the override to use."""
    output_dir = Path(cfg.paths.output_dir)
    datamodule, loggers = data_and_loggers(cfg)
    result = lr_range_test(cfg, datamodule, output_dir, loggers)
    for logger in loggers:
        logger.save()
    trackers.finish(loggers, flat_hparams(cfg), provenance(cfg), output_dir)
    print(f"Suggested max LR ({result['method']}): model.scheduler.max_lr={result['suggested_max_lr']:.4g}")
    print(f"Plot: {output_dir / 'lr_find.png'}")
    return result


def predict(cfg: DictConfig) -> dict:
    """Classify images (`classify_files`); metrics.json in the run dir. Some files not images:
    the rest are done, and SomeUnreadable says so."""
    from resnet_onecycle.classify_files import SomeUnreadable, classify, input_files
    from resnet_onecycle.inference import Classifier

    if OmegaConf.is_missing(cfg, "inputs"):
        raise ConfigError("inputs is missing: give inputs=<image file | folder | glob>, e.g. inputs=photos/.")
    output_dir, files = Path(cfg.paths.output_dir), input_files(cfg.inputs)
    classifier = Classifier.load(given_or_latest(cfg.get("ckpt_path"), cfg.paths.log_dir), cfg.device)
    summary = classify(classifier, files, output_dir, cfg.top_k, cfg.batch_size, cfg.gradcam_layer if cfg.gradcam else None,
                       cfg.max_pixels)
    write_metrics(output_dir, summary)
    if summary["unreadable"]:
        raise SomeUnreadable(f"{summary['unreadable']} of {len(files)} files are not readable images (listed above); "
                             f"the others are in {output_dir / 'predictions.csv'}.")
    return summary


def export(cfg: DictConfig) -> dict:
    """model.onnx and model.export.json in the run dir, checked with onnxruntime on real test images."""
    require_extra("export", "onnx", "onnxruntime", "onnxscript")
    from resnet_onecycle.inference import Classifier, test_split
    from resnet_onecycle.onnx_export import export_checked

    check("check_images", cfg.check_images, low=2, fix="batch 1 is checked too")
    classifier = Classifier.load(given_or_latest(cfg.get("ckpt_path"), cfg.paths.log_dir))
    images = test_split(classifier, cfg.data_source, run_data_dir(classifier.config, cfg))[0][: cfg.check_images]
    record = export_checked(classifier, images, Path(cfg.paths.output_dir), cfg.opset, cfg.tolerance,
                            cfg.measure_speed, cfg.data_source, cfg.overwrite)
    return {"status": "completed", **record}


def app(cfg: DictConfig) -> dict:
    """The Gradio app on `app.host`:`app.port` until stopped (Ctrl-C)."""
    require_extra("app", "gradio")
    from resnet_onecycle.app import check_port, serve
    from resnet_onecycle.errors import UserError
    from resnet_onecycle.inference import Classifier, test_split

    check_port(cfg.app.host, cfg.app.port)
    classifier = Classifier.load(given_or_latest(cfg.get("ckpt_path"), cfg.paths.log_dir))
    try:
        test = test_split(classifier, cfg.data_source, run_data_dir(classifier.config, cfg))
    except UserError as error:
        log.warning("No test data for the Mistakes tab and the examples: %s", error)
        test = None
    serve(classifier, test, Path(cfg.paths.output_dir), run_dir_of(str(classifier.ckpt_path)), cfg.app)
    return {"status": "completed"}


# --- what the tasks share ----------------------------------------------------------------------


def training_config(cfg: DictConfig) -> DictConfig:
    """The config a training run goes on with (a resumed run's saved one), checked before any
    work; metrics.json says `running` until the run says otherwise, so a run killed reads as not finished."""
    if cfg.get("resume"):
        cfg = resumed_config(cfg, *command_line())
    check_same_schedule(cfg)
    check_task_keys(cfg)
    check_one_cycle(**cfg.model.scheduler, epochs=cfg.trainer.max_epochs)
    if cfg.model.get("compile"):
        compile_cache.use(cfg.paths.compile_cache_dir)
    if first_process():
        write_metrics(Path(cfg.paths.output_dir), {"status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                   "pid": os.getpid(), "resumed_from": cfg.get("ckpt_path")})
    return cfg


def fit(trainer: L.Trainer, module, datamodule, cfg: DictConfig, start: float) -> dict:
    """`trainer.fit`, and its times for metrics.json; a stopped run's metrics.json says why."""
    output_dir = Path(cfg.paths.output_dir)
    compiled_before, prepared_before = compile_counters(), datamodule.prepare_time_s
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    except (DivergenceError, TrainingInterrupted) as stop:
        diverged = isinstance(stop, DivergenceError)
        summary = run_summary(trainer, datamodule, cfg, "diverged" if diverged else "interrupted", start)
        if not diverged:
            stop.resume = f"python src/train.py resume={output_dir}"
            summary.update(signal=stop.signal_name, checkpoint=str(stop.checkpoint), resume=stop.resume)
        if trainer.is_global_zero:
            write_metrics(output_dir, {**summary, "error": str(stop)} if diverged else summary)
        raise
    # The fit without the data's one-off preparation, which trainer.fit runs first (a cold cache's decode)
    fit_time = time.perf_counter() - start - (datamodule.prepare_time_s - prepared_before)
    return {"fit_time_s": round(fit_time, 2), "data_prep_time_s": round(datamodule.prepare_time_s, 2),
            **compile_cache.report(cfg.model.get("compile"), compiled_before, trainer.strategy.root_device)}


def check_task_keys(cfg: DictConfig) -> None:
    """The task's own keys (the components check theirs when they are built)."""
    ckpt = cfg.get("ckpt_path")
    problem = checkpoint_problem(checkpoint_file(ckpt), cfg.get("resume")) if ckpt is not None else None
    if problem:
        raise ConfigError(problem)
    check("test_ckpt", cfg.get("test_ckpt"), choices=("last", "best"))
    check("test", cfg.get("test"), choices=(True, False))
    if cfg.trainer.get("sync_batchnorm") and cfg.trainer.get("accelerator") == "cpu":
        raise ConfigError("trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm is CUDA-only); "
                          "with trainer.accelerator=cpu set trainer.sync_batchnorm=false.")


def instantiate_group(cfg: DictConfig | None) -> list:
    """Callbacks or loggers: every entry with a `_target_` (null entries switch one off)."""
    return [hydra.utils.instantiate(c) for c in (cfg or {}).values() if c is not None and "_target_" in c]


def data_and_loggers(cfg: DictConfig) -> tuple[L.LightningDataModule, list]:
    """Seeded, the DataModule (it checks its source before anything is read) and the loggers."""
    check("seed", cfg.seed, low=0)
    L.seed_everything(cfg.seed, workers=True)
    return hydra.utils.instantiate(cfg.data), trackers.build(cfg, Path(cfg.paths.output_dir))


def test(trainer: L.Trainer, module, datamodule, test_ckpt: str) -> None:
    """Test the last weights, or with `test_ckpt=best` those of the best epoch's checkpoint."""
    if test_ckpt == "best" and trainer.checkpoint_callback:
        trainer.strategy.barrier("checkpoints written")  # rank 0 waited for its background writes
        # The file's own weights (with callbacks=ema, the average's): test(ckpt_path=) would let
        # Lightning's weight-averaging callback put the raw weights back.
        module.load_state_dict(read_checkpoint(trainer.checkpoint_callback.best_model_path)["state_dict"])
    trainer.test(module, datamodule=datamodule)


def finish(trainer: L.Trainer, analysis: Analysis, summary: dict, cfg: DictConfig, start: float) -> dict:
    """On the first process: metrics.json (the summary, the analysis' per-class accuracy, the wall
    time), then the trackers' params, tags and artifacts."""
    output_dir = Path(cfg.paths.output_dir)
    if analysis.per_class_accuracy is not None:
        summary["per_class_accuracy"] = analysis.per_class_accuracy
    summary["wall_time_s"] = round(time.perf_counter() - start, 2)
    result = (f"test/acc {summary['test/acc']:.4f}" if "test/acc" in summary
              else f"val/acc {summary.get('val/acc', float('nan')):.4f} (test=false: no test)")
    if trainer.is_global_zero:
        write_metrics(output_dir, summary)
        log.info("%s  wall time %.1f s  -> %s", result, summary["wall_time_s"], output_dir)
        trackers.finish(trainer.loggers, flat_hparams(cfg), {**provenance(cfg), "device": summary.get("device")}, output_dir)
    return summary
