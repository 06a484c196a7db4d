"""The project's jobs as functions of a composed Hydra config; the scripts in src/ only call these."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from resnet_onecycle import compile_cache
from resnet_onecycle.analysis import Analysis
from resnet_onecycle.callbacks import Throughput
from resnet_onecycle.errors import ConfigError
from resnet_onecycle.files import save_figure, write_text
from resnet_onecycle.framework import compile_counters
from resnet_onecycle.lr_find import plot_lr_find, run_lr_find
from resnet_onecycle.module import CUDA_GRAPH_MODES, compile_mode
from resnet_onecycle.resume import (
    DivergenceError,
    RunGuard,
    TrainingInterrupted,
    check_same_schedule,
    checkpoint_problem,
    resumed_config,
    run_data_dir,
    run_dir_of,
    saved_config,
    with_overrides,
)
from resnet_onecycle.schedule import check_one_cycle
from resnet_onecycle.summary import (
    final_metrics,
    first_process,
    flat_hparams,
    provenance,
    run_summary,
    write_hparams,
    write_metrics,
)

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
    if cfg.model.get("compile"):
        compile_cache.use(cfg.paths.compile_cache_dir)
    output_dir = Path(cfg.paths.output_dir)
    if first_process():  # until the run says otherwise, a run that stops here, killed, reads as not finished
        write_metrics(output_dir, {"status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                   "pid": os.getpid(), "resumed_from": cfg.get("ckpt_path")})
    datamodule, loggers = data_and_loggers(cfg)
    found = pick_max_lr(cfg, datamodule, output_dir, loggers) if cfg.model.scheduler.max_lr == "auto" else {}
    module: L.LightningModule = hydra.utils.instantiate(cfg.model)
    analysis = analysis_of(cfg, "Training run report", events_dir=output_dir / "tensorboard", enabled=cfg.get("test"))
    # The guard last: an interrupted run's checkpoint is saved once every other callback has seen
    # the step (the weight average included). The analysis after it: at the fit's end the guard puts
    # back the metrics of a fit resumed from its final epoch, which the analysis reads.
    callbacks = sorted(instantiate_group(cfg.get("callbacks")), key=lambda callback: isinstance(callback, RunGuard))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=[*callbacks, analysis], logger=loggers)

    compiled_before, prepared_before = compile_counters(), datamodule.prepare_time_s
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
    # The fit without the data's one-off preparation, which trainer.fit runs first (a cold cache's decode)
    fit_time = time.perf_counter() - start - (datamodule.prepare_time_s - prepared_before)
    compile_record = compile_report(cfg, compiled_before, trainer.strategy.root_device)

    if cfg.get("test"):
        if cfg.test_ckpt == "best" and trainer.checkpoint_callback:
            trainer.strategy.barrier("checkpoints written")  # rank 0 waited for its background writes
            # The file's own weights (with callbacks=ema, the average's): test(ckpt_path=) would let
            # Lightning's weight-averaging callback put the raw weights back.
            load_weights(module, trainer.checkpoint_callback.best_model_path, cfg.model.net.width)
        trainer.test(module, datamodule=datamodule)
    summary = {**run_summary(trainer, datamodule, cfg, "completed", start), **analysis.fit_metrics,
               **final_metrics(trainer), "fit_time_s": round(fit_time, 2),
               "data_prep_time_s": round(datamodule.prepare_time_s, 2), **compile_record, **found,
               **next((c.summary() for c in trainer.callbacks if isinstance(c, Throughput)), {})}
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
            cfg.paths.data_dir = run_data_dir(saved, cfg)
            # the recipe the checkpoint was trained with, for report.md and the saved config
            cfg.trainer.max_epochs, cfg.seed = saved.trainer.max_epochs, saved.seed
            cfg.trainer.check_val_every_n_epoch = OmegaConf.select(saved, "trainer.check_val_every_n_epoch", default=1)
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
    problem = checkpoint_problem(Path(ckpt), cfg.get("resume")) if ckpt is not None else None
    if problem:
        raise ConfigError(problem)
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
    write_text(output_dir / "lr_find.json", json.dumps(result, indent=2) + "\n", "report")  # resume= reads it
    fig = plot_lr_find(result)
    save_figure(fig, output_dir / "lr_find.png")
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
    return {"compile_time_s": counts.pop("compile_time_s", None),
            "compile": {"mode": mode, "cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR"), **counts}}


def load_weights(module: L.LightningModule, ckpt_path: str, width) -> dict:
    from resnet_onecycle.inference import read_checkpoint

    checkpoint = read_checkpoint(ckpt_path)
    state = checkpoint["state_dict"]
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


# --- using a trained model ---------------------------------------------------------------------


def require(extra: str, *modules: str) -> None:
    """An optional extra's packages, or a one-line error naming the install command, before any work."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigError(f"this command needs the `{extra}` extra ({module} is not installed): "
                              f"pip install -e '.[{extra}]'.") from error


def checkpoint_of(cfg: DictConfig) -> Path:
    """`ckpt_path`, or the newest `last.ckpt` under the logs dir (its path printed)."""
    from resnet_onecycle.inference import newest_checkpoint

    if cfg.get("ckpt_path"):
        return Path(cfg.ckpt_path)
    found = newest_checkpoint(cfg.paths.log_dir)
    print(f"ckpt_path not given: using the newest checkpoint, {found}")
    return found


def input_files(inputs: str) -> list[Path]:
    """An image file, a folder (every file in it, recursively, hidden ones aside) or a glob."""
    import glob

    path = Path(str(inputs)).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [p for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    else:
        files = [Path(p) for p in sorted(glob.glob(str(path), recursive=True)) if Path(p).is_file()]
    if not files:
        raise ConfigError(f"inputs={inputs!r}: no such file, or no files in that folder or matching that glob; "
                          "give inputs=<image file | folder | glob>, e.g. inputs='photos/*.jpg'.")
    return files


def predict(cfg: DictConfig) -> dict:
    """Classify images: a table on the console, predictions.csv and .json (and with gradcam=true
    an overlay PNG per image) in the run dir. Unreadable files are listed with the reason."""
    import csv

    from PIL import Image

    from resnet_onecycle.inference import Classifier, ImageError, load_image

    if OmegaConf.is_missing(cfg, "inputs"):
        raise ConfigError("inputs is missing: give inputs=<image file | folder | glob>, e.g. inputs=photos/.")
    output_dir = Path(cfg.paths.output_dir)
    files = input_files(cfg.inputs)
    classifier = Classifier.load(checkpoint_of(cfg), cfg.device)
    start = time.perf_counter()
    images, readable, unreadable = [], [], {}
    for file in files:
        try:
            images.append(load_image(file))
            readable.append(file)
        except ImageError as error:
            unreadable[str(file)] = str(error)
    batch = torch.stack(images) if images else torch.zeros(0, 3, 32, 32, dtype=torch.uint8)
    probabilities = classifier.probabilities(batch, cfg.batch_size)
    top = classifier.top_k(probabilities, cfg.top_k)
    seconds = time.perf_counter() - start
    rows = [{"file": str(f), "top_k": [{"label": c, "probability": p} for c, p in t]} for f, t in zip(readable, top)]
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", *[f"{kind}_{i + 1}" for i in range(len(top[0]) if top else cfg.top_k)
                                   for kind in ("label", "probability")]])
        for row in rows:
            writer.writerow([row["file"], *[v for t in row["top_k"] for v in (t["label"], f"{t['probability']:.6f}")]])
    (output_dir / "predictions.json").write_text(json.dumps(
        {"ckpt_path": str(classifier.ckpt_path), "predictions": rows,
         "unreadable": [{"file": f, "error": e} for f, e in unreadable.items()]}, indent=2) + "\n")
    if cfg.gradcam and len(batch):
        predicted = probabilities.argmax(1).tolist()
        overlays = classifier.overlays(batch, classifier.gradcam(batch, predicted, cfg.gradcam_layer))
        folder = output_dir / "gradcam"
        folder.mkdir(exist_ok=True)
        for i, (file, overlay) in enumerate(zip(readable, overlays)):
            Image.fromarray(overlay).resize((128, 128), Image.Resampling.NEAREST).save(folder / f"{i:05d}_{file.stem}.png")
    width = max((len(str(f)) for f in files), default=4)
    for row in rows:
        print(f"{row['file']:<{width}}  " + "  ".join(f"{t['label']} {t['probability']:.3f}" for t in row["top_k"]))
    for file, error in unreadable.items():
        print(f"{file:<{width}}  unreadable: {error.split(': ', 1)[-1]}")
    summary = {"status": "completed", "images": len(rows), "unreadable": len(unreadable), "ckpt_path": str(classifier.ckpt_path),
               "seconds": round(seconds, 3), "images_per_s": round(len(rows) / seconds, 1) if seconds else None,
               "device": str(classifier.device), "output": str(output_dir)}
    write_metrics(output_dir, summary)
    print(f"{len(rows)} images in {seconds:.2f} s -> {output_dir / 'predictions.csv'}"
          + (f"; {len(unreadable)} unreadable" if unreadable else ""))
    return summary


def export(cfg: DictConfig) -> dict:
    """model.onnx and model.export.json in the run dir, checked with onnxruntime on real test images."""
    from resnet_onecycle.inference import Classifier, test_split
    require("export", "onnx", "onnxruntime", "onnxscript")
    from resnet_onecycle.onnx_export import ExportMismatch, agrees, compare, export_onnx, onnx_session, speeds

    if isinstance(cfg.check_images, bool) or not isinstance(cfg.check_images, int) or cfg.check_images < 2:
        raise ConfigError(f"check_images={cfg.check_images!r} must be a whole number >= 2 (batch 1 is checked too).")
    output_dir = Path(cfg.paths.output_dir)
    classifier = Classifier.load(checkpoint_of(cfg))
    images = test_split(classifier, cfg.data_source, run_data_dir(classifier.config, cfg))[0][: cfg.check_images]
    path = output_dir / "model.onnx"
    export_onnx(classifier, path, cfg.opset)
    session = onnx_session(path)
    checks = [compare(classifier, session, images[:1]), compare(classifier, session, images)]
    record = {
        "file": "model.onnx", "ckpt_path": str(classifier.ckpt_path), "opset": cfg.opset, "exporter": "torch.onnx dynamo",
        "input": {"name": "images", "dtype": "float32", "shape": ["batch", 3, 32, 32], "layout": "NCHW",
                  "range": [0, 1], "channels": "RGB", "normalization": "inside the graph", "tta": classifier.tta},
        "output": {"name": "logits", "shape": ["batch", len(classifier.classes)]}, "classes": list(classifier.classes),
        "check": {"data_source": cfg.data_source or "the run's data.source", "tolerance": cfg.tolerance, "batches": checks},
        "torch": torch.__version__,
    }
    bad = [c for c in checks if not agrees(c, cfg.tolerance)]
    if bad:
        (output_dir / "model.export.json").write_text(json.dumps({**record, "status": "mismatch"}, indent=2) + "\n")
        raise ExportMismatch(f"{path}: onnxruntime disagrees with PyTorch beyond tolerance={cfg.tolerance}: {bad}")
    if cfg.measure_speed:
        record["speed_cpu"] = {"threads": torch.get_num_threads(), **speeds(classifier, session, images)}
    (output_dir / "model.export.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"Exported {path} (opset {cfg.opset}); onnxruntime against PyTorch: "
          + ", ".join(f"batch {c['images']}: max |diff| {c['max_abs_logit_difference']:.2e}, top-1 agreement "
                      f"{c['top1_agreement']:.0%}" for c in checks))
    for batch, speed in record.get("speed_cpu", {}).items():
        if batch.startswith("batch_"):
            print(f"  {batch.replace('_', ' ')}: onnxruntime {speed['onnxruntime_images_per_s']:,.0f} images/s, "
                  f"PyTorch eager {speed['torch_eager_images_per_s']:,.0f} images/s")
    return {"status": "completed", **record}


def app(cfg: DictConfig) -> dict:
    """The Gradio app on `app.host`:`app.port` until stopped (Ctrl-C)."""
    from PIL import Image

    require("app", "gradio")
    from resnet_onecycle.app import Model, build, check_port
    from resnet_onecycle.errors import UserError
    from resnet_onecycle.inference import Classifier, test_split

    settings = cfg.app
    check_port(settings.host, settings.port)
    classifier = Classifier.load(checkpoint_of(cfg))
    output_dir = Path(cfg.paths.output_dir)
    try:
        test = test_split(classifier, cfg.data_source, run_data_dir(classifier.config, cfg))
    except UserError as error:
        log.warning("No test data for the Mistakes tab and the examples: %s", error)
        test = None
    examples = []
    if test is not None:  # one test image per class, as files the app can offer
        folder = output_dir / "examples"
        folder.mkdir(parents=True, exist_ok=True)
        for label, name in enumerate(classifier.classes):
            index = (test[1] == label).nonzero().flatten()
            if len(index):
                path = folder / f"{name}.png"
                Image.fromarray(test[0][int(index[0])].permute(1, 2, 0).numpy()).save(path)
                examples.append(str(path))
    report_dir = run_dir_of(str(classifier.ckpt_path))
    demo = build(Model(classifier, test), examples, report_dir, settings.misclassified)
    print(f"Serving {classifier.ckpt_path} on http://{settings.host}:{settings.port} (Ctrl-C stops it)", flush=True)
    demo.launch(server_name=settings.host, server_port=int(settings.port), share=bool(settings.share),
                allowed_paths=[str(output_dir), *([str(report_dir)] if report_dir else [])], quiet=True)
    return {"status": "completed"}
