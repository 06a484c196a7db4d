"""The experiment trackers beside TensorBoard (`logger=csv|mlflow|wandb|many`): building them,
what each run adds to them at its end, and a sweep as one MLflow parent run.

Lightning's own loggers log the metrics, each `trainer.log_every_n_steps` steps and each epoch.
This adds what Lightning leaves to the user: the flattened config as params, tags, the run's
files as artifacts, a resumed run continuing its own MLflow run, a sweep's jobs under one parent.
A tracker that cannot be reached is dropped with a warning naming it and the fix; the run goes on.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict

from resnet_onecycle.errors import require_extra

log = logging.getLogger(__name__)

EXTRAS = {"MLFlowLogger": ("mlflow", "mlflow"), "WandbLogger": ("wandb", "wandb")}  # logger: (extra, module)
PARENT_RUN = "RESNET_ONECYCLE_MLFLOW_PARENT_RUN"  # set for a sweep's jobs by SweepRuns
SWEEP = "RESNET_ONECYCLE_SWEEP"  # the sweep dir's name, a W&B group
RUN_ID_FILE = "mlflow_run.json"  # in the run dir: the MLflow run a resume continues
ARTIFACTS = ("curves.png", "misclassified.png", "gradcam.png", "confusion_matrix.png", "report.md", "metrics.json",
             "per_class_accuracy.json", "lr_find.png", ".hydra/config.yaml")


def build(cfg: DictConfig, output_dir: Path) -> list:
    """The loggers `cfg.logger` names (null entries switch one off), each one that answers."""
    loggers = []
    for name, entry in (cfg.get("logger") or {}).items():
        if entry is None or "_target_" not in entry:
            continue
        target = str(entry._target_).rsplit(".", 1)[-1]
        if target == "MLFlowLogger":
            entry = mlflow_entry(entry, output_dir)
        elif target == "WandbLogger":
            entry = wandb_entry(entry, output_dir)
        try:
            logger = hydra.utils.instantiate(entry)
        except Exception as error:  # noqa: BLE001 - a missing package is the user's to install
            if target in EXTRAS and isinstance(error.__cause__ or error, ImportError):
                require_extra(*EXTRAS[target], what=f"logger={name}")
            raise
        if answers(name, logger, output_dir):
            loggers.append(logger)
    return loggers


def mlflow_entry(entry: DictConfig, output_dir: Path) -> DictConfig:
    """The MLflow logger's config for this run: the run id a resumed run had, a sweep's parent run,
    the run dir's name as the run's, a local store's file artifacts as a URI, fast failure."""
    entry = entry.copy()
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # an unreachable server: one try, then the warning
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    saved = Path(output_dir) / RUN_ID_FILE
    with open_dict(entry):
        if saved.is_file() and not entry.get("run_id"):
            entry.run_id = json.loads(saved.read_text())["run_id"]
        entry.run_name = entry.get("run_name") or Path(output_dir).name
        tags = dict(entry.get("tags") or {})
        tags.update({"recipe": str(choice("experiment") or "default"), "run_dir": str(output_dir)})
        if os.environ.get(PARENT_RUN):
            tags["mlflow.parentRunId"] = os.environ[PARENT_RUN]
        entry.tags = tags
        location = entry.get("artifact_location")
        if location and "://" not in str(location):
            entry.artifact_location = Path(location).resolve().as_uri()
    return entry


def wandb_entry(entry: DictConfig, output_dir: Path) -> DictConfig:
    """The W&B logger's config for this run: named after the run dir, a sweep's jobs in one group."""
    entry = entry.copy()
    with open_dict(entry):
        entry.name = entry.get("name") or Path(output_dir).name
        if os.environ.get(SWEEP) and not entry.get("group"):
            entry.group = os.environ[SWEEP]
        Path(str(entry.save_dir)).mkdir(parents=True, exist_ok=True)
    return entry


def choice(group: str) -> str | None:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get(group) if HydraConfig.initialized() else None


def answers(name: str, logger, output_dir: Path) -> bool:
    """Whether the tracker takes writes: a remote one's (MLflow, W&B) run is made now, not at the first
    step; local writers (TensorBoard, CSV) make their files when they first write. An MLflow run's
    id is kept in the run dir for a resume."""
    if type(logger).__name__ not in EXTRAS:
        return True
    try:
        logger.experiment  # noqa: B018 - makes the run (MLflow, W&B) or the writer
        run_id = getattr(logger, "run_id", None)
    except Exception as error:  # noqa: BLE001 - any failure to reach it: the run goes on without it
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        log.warning("logger=%s: the tracker cannot be reached (%s): this run goes on without it. Check %s, or "
                    "leave it out (logger.%s=null).", name, reason, "its tracking_uri" if "MLFlow" in type(logger).__name__
                    else "its settings", name)
        return False
    if run_id and "MLFlow" in type(logger).__name__:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / RUN_ID_FILE).write_text(json.dumps({"run_id": run_id}) + "\n")
    return True


def finish(loggers: list, params: dict, tags: dict, output_dir: Path) -> None:
    """At a run's end: params and tags, and its files as artifacts, in each MLflow run (and the
    params in a CSV logger's hparams.yaml). A failure is a warning: the run's own files are there."""
    for logger in loggers:
        kind = type(logger).__name__
        try:
            if kind == "CSVLogger":
                logger.log_hyperparams(params)
                logger.save()
            elif kind == "MLFlowLogger":
                mlflow_finish(logger, params, tags, Path(output_dir))
            elif kind == "WandbLogger":
                wandb_finish(logger, {**params, **tags}, Path(output_dir))
        except Exception as error:  # noqa: BLE001 - never lose a finished run to a tracker
            log.warning("logger %s: could not record the run's end (%s); the run dir holds everything.", kind, error)


def mlflow_finish(logger, params: dict, tags: dict, output_dir: Path) -> None:
    """Params, tags and the run's files; with `log_model=true`, Lightning's own `finalize` adds the checkpoints."""
    client, run_id = logger.experiment, logger.run_id
    logger.log_hyperparams(params)
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))
    for name in ARTIFACTS:
        if (output_dir / name).is_file():
            client.log_artifact(run_id, str(output_dir / name), artifact_path=str(Path(name).parent).strip("."))
    logger.finalize("success")


def wandb_finish(logger, params: dict, output_dir: Path) -> None:
    logger.log_hyperparams(params)
    pictures = [str(output_dir / n) for n in ARTIFACTS if n.endswith(".png") and (output_dir / n).is_file()]
    if pictures:
        logger.log_image("pictures", pictures, caption=[Path(p).stem for p in pictures])
    logger.experiment.finish()


class SweepRuns(Callback):
    """A multirun's jobs, together in the trackers: one W&B group (the sweep dir's name), and with
    `logger` holding mlflow one parent MLflow run, each job a child of it (its `mlflow.parentRunId`
    tag), the sweep's summary table and plot as the parent's artifacts."""

    def __init__(self) -> None:
        self.client, self.run_id = None, None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        os.environ[SWEEP] = Path(str(config.hydra.sweep.dir)).name
        entry = (config.get("logger") or {}).get("mlflow")
        if entry is None:
            return
        try:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=str(entry.tracking_uri))
            experiment = self.client.get_experiment_by_name(str(entry.experiment_name))
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
                str(entry.experiment_name), artifact_location=Path(str(entry.artifact_location)).resolve().as_uri())
            run = self.client.create_run(experiment_id, run_name=Path(config.hydra.sweep.dir).name,
                                         tags={"sweep_dir": str(config.hydra.sweep.dir)})
        except Exception as error:  # noqa: BLE001 - the jobs still run and log on their own
            log.warning("logger=mlflow: no parent run for this sweep (%s); its jobs log as runs of their own.", error)
            return
        self.run_id = os.environ[PARENT_RUN] = run.info.run_id

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.run_id is None:
            return
        from resnet_onecycle.sweep_summary import write_summary

        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            write_summary(sweep_dir)  # before SweepSummary's own, which may end the process
            for name in ("summary.csv", "summary.md", "summary.png"):
                if (sweep_dir / name).is_file():
                    self.client.log_artifact(self.run_id, str(sweep_dir / name))
        self.client.set_terminated(self.run_id)
