"""The run dir's config: which dir a command writes into, and which config a command on an
earlier run goes on with.

- `resume=<run dir>` continues that run from its newest complete checkpoint with the config it
  saved (`.hydra/config.yaml`) plus this command's key=value overrides.
- `ckpt_path=<run>/checkpoints/x.ckpt` continues into the checkpoint's run dir with the config
  composed now, if the schedule is the same (`check_same_schedule`).
- eval.py, predict.py, export.py and the app read a checkpoint's run's config (`saved_config`).

`configs/hydra/default.yaml` points a resumed run at its own dir through the resolvers that
`register_resolvers` adds. Light to import: the command-line check uses it before the long imports.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from resnet_onecycle.checkpoints import resumable_checkpoint, run_metrics
from resnet_onecycle.errors import ConfigError

log = logging.getLogger(__name__)

SCHEDULE_KEYS = (
    "trainer.max_epochs",
    "trainer.accumulate_grad_batches",
    "data.batch_size",
    "data.subset",
    "data.val_size",
    "model.scheduler.max_lr",
    "model.scheduler.div_factor",
    "model.scheduler.peak_epoch",
    "model.scheduler.end_lr",
    "model.scheduler.anneal_strategy",
    "model.scheduler.cycle_momentum",
)


def run_dir_of(ckpt_path: str | None) -> Path | None:
    """The run dir holding a checkpoint (<run>/checkpoints/<file>), if it is one of ours."""
    if not ckpt_path:
        return None
    run = Path(ckpt_path).expanduser().resolve().parent.parent
    return run if (run / ".hydra" / "config.yaml").is_file() else None


def output_dir(task: str, resume: str | None, ckpt_path: str | None, fresh: str) -> str:
    """hydra.run.dir: a resumed training run's own dir, else a fresh one."""
    if task != "train":
        return fresh
    if resume:
        return str(resume)
    run = run_dir_of(ckpt_path)
    return str(run) if run is not None else fresh


def output_subdir(task: str, resume: str | None, ckpt_path: str | None) -> str:
    """hydra.output_subdir: a resumed run keeps the config files its dir already holds."""
    if task == "train" and (resume or run_dir_of(ckpt_path) is not None):
        return f".hydra/resumed-{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    return ".hydra"


def register_resolvers() -> None:
    """`${resume_output_dir:...}` and `${resume_output_subdir:...}`, which hydra.run.dir and
    hydra.output_subdir use, and `${project_root:}`, paths.root_dir: the checkout's root, so that
    logs/ and data/ land in one place whatever the working directory."""
    OmegaConf.register_new_resolver("project_root", lambda: str(Path(__file__).resolve().parents[2]), replace=True)
    OmegaConf.register_new_resolver("resume_output_dir", output_dir, replace=True)
    OmegaConf.register_new_resolver("resume_output_subdir", output_subdir, replace=True)


def status_of(output_dir: Path) -> str | None:
    """The status a run dir's metrics.json states, or None."""
    return run_metrics(Path(output_dir)).get("status")


def command_line() -> tuple[list[str], set[str]]:
    """This command's overrides and the names of the config groups, from Hydra."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    return list(hydra_cfg.overrides.task), set(hydra_cfg.runtime.choices)


def saved_config(run: Path) -> DictConfig:
    """The config a run saved; a max LR of `auto` is replaced by what its LR range test picked."""
    file = Path(run) / ".hydra" / "config.yaml"
    try:
        saved = OmegaConf.load(file)
        missing = [key for key in ("model", "data", "trainer") if not isinstance(saved.get(key), DictConfig)]
        if missing:
            raise ValueError(f"no {', '.join(missing)} section")
    except Exception as error:  # noqa: BLE001 - a YAML error, or YAML that is no run config
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise ConfigError(
            f"{file} cannot be read as the run's config ({type(error).__name__}: {reason}); resume=, eval.py, predict.py "
            f"and the app take the run's recipe from it. Restore it, or start a new run with the overrides in "
            f"{file.parent / 'overrides.yaml'}; a checkpoint copied out of its run dir loads without it."
        ) from error
    found = Path(run) / "lr_find.json"
    if OmegaConf.select(saved, "model.scheduler.max_lr") == "auto" and found.is_file():
        try:
            saved.model.scheduler.max_lr = float(json.loads(found.read_text())["suggested_max_lr"])
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"{found} cannot be read ({type(error).__name__}: {error}): delete it, and the LR range "
                              "test runs again.") from error
    return saved


def with_overrides(saved: DictConfig, cfg: DictConfig, overrides: list[str], groups: set[str],
                   keys: tuple[str, ...] | None = None):
    """`saved` with this command's key=value overrides (their values read from the composed `cfg`).

    With `keys`, only overrides under those top-level keys apply and the parts are returned as a
    tuple; without, a group override (`experiment=original`) is refused, since a saved config cannot
    be re-composed.
    """
    saved = copy.deepcopy(saved)
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in ("resume", "ckpt_path") or key.startswith("hydra."):
            continue
        if keys is not None:
            if key.split(".")[0] in keys and key not in groups:
                OmegaConf.update(saved, key, OmegaConf.select(cfg, key), force_add=True)
            continue
        if key in groups:
            raise ConfigError(
                f"resume={cfg.resume!r} continues with the run's saved config, so `{override}` (a config "
                "group) cannot apply; give key=value overrides only."
            )
        OmegaConf.update(saved, key, OmegaConf.select(cfg, key), force_add=True)
    return tuple(saved[k] for k in keys) if keys is not None else saved


def resume_problem(resume: str) -> str | None:
    """Why `resume=` cannot continue that dir, or None. The command-line check asks first, so a
    dir that is not a run is refused before Hydra makes it. A run that stopped before its first
    checkpoint starts again from the beginning."""
    run = Path(str(resume)).expanduser()
    if not (run / ".hydra" / "config.yaml").is_file():
        return (f"resume={str(resume)!r}: not a run dir (no .hydra/config.yaml in {run.resolve()}); give a dir under "
                "logs/train/runs/.")
    if status_of(run) == "completed":
        return (f"resume={str(resume)!r}: that run completed (its metrics.json says so); nothing is left to resume. "
                "Start a new run, or evaluate it: python src/eval.py ckpt_path=<run>/checkpoints/last.ckpt.")
    return None


def resumed_config(cfg: DictConfig, overrides: list[str], groups: set[str]) -> DictConfig:
    """For resume=<run dir>: the run's saved config plus this command's key=value overrides."""
    problem = resume_problem(cfg.resume)
    if problem:
        raise ConfigError(problem)
    run = Path(cfg.resume).expanduser()
    ckpt = cfg.get("ckpt_path")
    if ckpt and run_dir_of(ckpt) != run.resolve():
        raise ConfigError(f"resume={cfg.resume!r} with ckpt_path={ckpt!r}: give a checkpoint of that run, "
                          f"under {run}/checkpoints/.")
    ckpt = Path(ckpt) if ckpt else resumable_checkpoint(run)
    original = saved_config(run)
    saved = with_overrides(original, cfg, overrides, groups)
    saved.resume = str(run)
    saved.ckpt_path = str(ckpt) if ckpt else None
    if ckpt is None:
        log.warning("resume=%s: the run saved no checkpoint before it stopped; it starts again from the beginning.", run)
    saved.paths = cfg.paths  # this command's paths (they resolve to the same run dir)
    saved.paths.data_dir = run_data_dir(original, cfg)
    return saved


def run_data_dir(run_config: DictConfig | None, cfg: DictConfig) -> str | None:
    """paths.data_dir for a command on an earlier run: this command's where it names one, else the
    one that run was given, so that its cache (or its download) is not made again under ./data."""
    def named(config: DictConfig | None) -> str | None:
        paths = config.get("paths") if config is not None else None
        value = OmegaConf.to_container(paths, resolve=False).get("data_dir") if paths is not None else None
        return value if isinstance(value, str) and "${" not in value else None  # an interpolation: the default

    return named(cfg) or named(run_config) or OmegaConf.select(cfg, "paths.data_dir")


def check_same_schedule(cfg: DictConfig) -> None:
    """Refuse to continue a run on another schedule than the one it saved."""
    run = run_dir_of(cfg.get("ckpt_path"))
    if run is None:
        return  # not one of our run dirs: resume.SameSchedule compares the checkpoint's own schedule
    saved = saved_config(run)
    differs = [f"{key}: {OmegaConf.select(saved, key)!r} in the run, {OmegaConf.select(cfg, key)!r} now"
               for key in SCHEDULE_KEYS if OmegaConf.select(saved, key) != OmegaConf.select(cfg, key)]
    if differs:
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path!r}: resuming needs the run's own schedule, and this differs: "
            + "; ".join(differs)
            + f". Resume with `resume={run}` alone (it reuses the saved config), or start a new run."
        )


def with_run_config(cfg: DictConfig, ckpt_path: str) -> DictConfig:
    """For eval.py: the model and data configs, the epochs and the seed of the checkpoint's run
    (when it has a run dir), with this command's key=value overrides on top."""
    run = run_dir_of(ckpt_path)
    if run is None:
        return cfg
    saved = saved_config(run)
    with open_dict(cfg):
        cfg.model, cfg.data = with_overrides(saved, cfg, *command_line(), keys=("model", "data"))
        cfg.paths.data_dir = run_data_dir(saved, cfg)
        # the recipe the checkpoint was trained with, for report.md and the saved config
        cfg.trainer.max_epochs, cfg.seed = saved.trainer.max_epochs, saved.seed
        cfg.trainer.check_val_every_n_epoch = OmegaConf.select(saved, "trainer.check_val_every_n_epoch", default=1)
    return cfg
