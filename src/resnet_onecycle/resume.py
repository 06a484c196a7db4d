"""Resuming a run: into its own dir, with its own config, refusing a changed schedule.

`resume=<run dir>` continues that run from its `checkpoints/last.ckpt` with the config it saved
(`.hydra/config.yaml`), plus this command's key=value overrides. `ckpt_path=<run>/checkpoints/x.ckpt`
continues into the checkpoint's run dir with the config composed now. Either way the schedule
(epochs, batch size, training subset, max LR and the other one-cycle keys) must be the one the
run started with: OneCycleLR's saved position only means something on the same schedule.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from resnet_onecycle.errors import ConfigError

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


OmegaConf.register_new_resolver("resume_output_dir", output_dir, replace=True)
OmegaConf.register_new_resolver("resume_output_subdir", output_subdir, replace=True)


def saved_config(run: Path) -> DictConfig:
    """The config a run saved; a max LR of `auto` is replaced by what its LR range test picked."""
    saved = OmegaConf.load(run / ".hydra" / "config.yaml")
    if OmegaConf.select(saved, "model.scheduler.max_lr") == "auto" and (run / "lr_find.json").is_file():
        saved.model.scheduler.max_lr = json.loads((run / "lr_find.json").read_text())["suggested_max_lr"]
    return saved


def with_overrides(saved: DictConfig, cfg: DictConfig, overrides: list[str], groups: set[str],
                   keys: tuple[str, ...] | None = None):
    """`saved` with this command's key=value overrides (their values read from the composed `cfg`).

    With `keys`, only overrides under those top-level keys apply and the parts are returned as a
    tuple; without, a group override (`experiment=seed`) is refused, since a saved config cannot
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


def resumed_config(cfg: DictConfig, overrides: list[str], groups: set[str]) -> DictConfig:
    """For resume=<run dir>: the run's saved config plus this command's key=value overrides."""
    run = Path(cfg.resume).expanduser()
    saved_path = run / ".hydra" / "config.yaml"
    if not saved_path.is_file():
        raise ConfigError(f"resume={cfg.resume!r}: not a run dir (no .hydra/config.yaml in {run.resolve()}).")
    last = run / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise ConfigError(
            f"resume={cfg.resume!r}: the run saved no checkpoints/last.ckpt (it stopped before it saved one); "
            "start it again instead."
        )
    saved = with_overrides(saved_config(run), cfg, overrides, groups)
    saved.resume = str(run)
    saved.ckpt_path = str(last)
    saved.paths = cfg.paths  # this command's paths (they resolve to the same run dir)
    return saved


def check_same_schedule(cfg: DictConfig) -> None:
    """Refuse to continue a run on another schedule than the one it saved."""
    run = run_dir_of(cfg.get("ckpt_path"))
    if run is None:
        return  # not one of our run dirs: the LightningModule still compares the schedules it can see
    saved = saved_config(run)
    differs = [
        f"{key}: {OmegaConf.select(saved, key)!r} in the run, {OmegaConf.select(cfg, key)!r} now"
        for key in SCHEDULE_KEYS
        if OmegaConf.select(saved, key) != OmegaConf.select(cfg, key)
    ]
    if differs:
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path!r}: resuming needs the run's own schedule, and this differs: "
            + "; ".join(differs)
            + f". Resume with `resume={run}` alone (it reuses the saved config), or start a new run."
        )
