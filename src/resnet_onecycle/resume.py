"""Resume: everything that makes a stopped run continue exactly where it stopped.

- `resume=<run dir>` continues that run from its newest complete checkpoint (`checkpoints/last.ckpt`
  as a rule; from the beginning when it saved none) with the config it saved (`.hydra/config.yaml`)
  plus this command's key=value overrides; a checkpoint that cannot be read is refused, naming the
  run's others. `ckpt_path=<run>/checkpoints/x.ckpt` continues into the checkpoint's run dir with
  the config composed now. `configs/hydra/default.yaml` points such a run at its own dir through
  the resolvers registered here.
- The schedule (epochs, batch size, training subset, max LR and the other one-cycle keys) must be
  the one the run started with, since OneCycleLR's saved position only means something on it:
  `check_same_schedule` compares configs before any work; `RunGuard` compares the checkpoint's
  OneCycleLR state itself, for a checkpoint from outside a run dir.
- `RunGuard`, a callback: SIGINT/SIGTERM save `last.ckpt` at a step boundary and stop; every
  checkpoint carries the random generators' states, put back when training resumes.
- The batch position inside an epoch is the DataModule's checkpoint state
  (`data.cifar10.CIFAR10DataModule.state_dict`), the epoch Lightning's (`Batches.set_epoch`);
  `last.ckpt` every `callbacks.last_checkpoint.every_s` seconds is `callbacks.LastCheckpoint`;
  the exit codes 130 and 143 are `cli.run`'s.

Lightning's own SIGTERM handling (2.6) stops at a step boundary too, but it leaves SIGINT to
KeyboardInterrupt, raised wherever the step happens to be, and exits with 0 or 1: one handler for
both signals keeps a saved state good and an exit code a scheduler can read (docs/design.md).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import signal
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from resnet_onecycle.callbacks import AsyncCheckpointWrites
from resnet_onecycle.errors import ConfigError, UserError
from resnet_onecycle.framework import one_cycle_peak_step
from resnet_onecycle.summary import final_metrics, status_of

log = logging.getLogger(__name__)


class DivergenceError(UserError):
    """The loss became non-finite; the message names the step, the LR and the likely cause."""


class TrainingInterrupted(Exception):
    """Raised out of `Trainer.fit` once an interrupted run's last.ckpt is saved.

    An exception, not `trainer.should_stop`: a stop mid-epoch would still run validation and
    let ModelCheckpoint save over last.ckpt as if the epoch had ended.
    """

    def __init__(self, signal_name: str, checkpoint: Path) -> None:
        super().__init__(f"interrupted by {signal_name}; saved {checkpoint}")
        self.signal_name, self.checkpoint = signal_name, checkpoint


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    callback = trainer.checkpoint_callback
    if callback is not None and callback.dirpath:
        return Path(callback.dirpath) / "last.ckpt"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


class RunGuard(L.Callback):
    """Stops a run only where its saved state is good, and puts a resumed run back exactly.

    SIGINT (Ctrl-C) or SIGTERM (what SLURM sends before pre-emption) during training: the step in
    flight finishes, `last.ckpt` is saved there (the batch order is resumable mid-epoch), and
    TrainingInterrupted is raised out of `Trainer.fit`.

    A non-finite loss stops the run with a DivergenceError naming the step and its LR. Losses stay
    on the device and are read back only every `check_every_n_steps` steps, at the last step of
    each epoch (before validation and checkpointing) and before any save, so the guard costs one
    host sync per check, and no checkpoint is saved after a non-finite loss.

    Its state in every checkpoint is the random generators' (torch, numpy, python, CUDA), put back
    when training resumes, so a resumed run draws the same augmentations as an uninterrupted one,
    and the metrics logged so far, so a run resumed from its final epoch's checkpoint (killed while
    testing or writing its pictures) reports the fit's metrics all the same.
    A checkpoint whose OneCycleLR state is another schedule than this run's is refused, naming
    what differs.
    """

    def __init__(self, check_every_n_steps: int = 50) -> None:
        self.check_every_n_steps = check_every_n_steps
        self.interrupted: str | None = None
        self.pending: list[tuple[int, int, float, torch.Tensor]] = []  # (step, epoch, lr, loss)
        self.step_lr = float("nan")
        self.previous_handlers: dict[int, object] = {}
        self.rng_to_restore: dict | None = None
        self.metrics_to_restore: dict[str, float] = {}
        self.saved_schedule: dict | None = None

    # --- signals ------------------------------------------------------------------------------

    def on_train_start(self, trainer, module) -> None:
        restore_rng_states(self.rng_to_restore)
        self.rng_to_restore = None
        self.interrupted = None
        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous_handlers[signum] = signal.getsignal(signum)
                signal.signal(signum, self.handle_signal)
        except ValueError:  # not the main thread: signals stay with whoever owns them
            self.previous_handlers = {}

    def handle_signal(self, signum, frame) -> None:
        self.interrupted = signal.Signals(signum).name

    def restore_handlers(self) -> None:
        for signum, handler in self.previous_handlers.items():
            signal.signal(signum, handler)
        self.previous_handlers = {}

    def on_train_end(self, trainer, module) -> None:
        self.restore_handlers()

    def on_exception(self, trainer, module, exception) -> None:
        self.restore_handlers()

    def on_fit_end(self, trainer, module) -> None:
        # A fit resumed from its final epoch logs nothing (its sanity check even clears the metrics):
        # the checkpoint's stand. Any epoch that ran logged its own over them.
        for key, value in self.metrics_to_restore.items():
            trainer.callback_metrics.setdefault(key, torch.tensor(value))
        self.metrics_to_restore = {}

    # --- what a checkpoint holds ----------------------------------------------------------------

    def state_dict(self) -> dict:
        trainer = getattr(self, "trainer", None)
        metrics = final_metrics(trainer) if trainer is not None else {}
        return {"rng": rng_states(), "metrics": {k: v for k, v in metrics.items() if not k.startswith("test/")}}

    def setup(self, trainer, module, stage: str) -> None:
        self.trainer = trainer

    def load_state_dict(self, state_dict: dict) -> None:
        # put back when training starts, after model set-up drew from the generators
        self.rng_to_restore = state_dict.get("rng", state_dict)  # a checkpoint from before the metrics: its states alone
        self.metrics_to_restore = state_dict.get("metrics", {})

    def on_load_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        schedulers, optimizers = checkpoint.get("lr_schedulers"), checkpoint.get("optimizer_states")
        if schedulers and optimizers and "total_steps" in schedulers[0]:
            self.saved_schedule = schedule_of(schedulers[0], optimizers[0]["param_groups"][0])

    def on_fit_start(self, trainer, module) -> None:
        # After configure_optimizers, before Lightning loads the saved scheduler state over the new
        # one: a state from another schedule would carry the old total_steps and fail later.
        saved, self.saved_schedule = self.saved_schedule, None
        if saved is None or not trainer.lr_scheduler_configs:
            return
        scheduler = trainer.lr_scheduler_configs[0].scheduler
        now = schedule_of(scheduler.state_dict(), scheduler.optimizer.param_groups[0])
        differs = [f"{key} {saved[key]:.6g} in the checkpoint, {now[key]:.6g} now" for key in saved
                   if saved[key] is not None and now[key] is not None
                   and not math.isclose(saved[key], now[key], rel_tol=1e-9)]
        if differs:
            raise ConfigError(
                "ckpt_path: the checkpoint's one-cycle schedule differs from this config's: " + "; ".join(differs)
                + ". total_steps and peak_step follow trainer.max_epochs, data.batch_size, data.subset and "
                "model.scheduler.peak_epoch; the LRs follow model.scheduler. Resume with the schedule the run started with."
            )

    def on_save_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        if self.pending:  # a timed save mid-epoch: never over a loss already non-finite
            self.check(trainer)

    # --- the check after every step -----------------------------------------------------------

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.step_lr = trainer.optimizers[0].param_groups[0]["lr"]  # the scheduler moves it after the step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        # global_step already counts this step
        self.pending.append((trainer.global_step - 1, trainer.current_epoch, self.step_lr, loss.detach()))
        # Decide once, from one reading of the flag: a signal landing after this line waits for the
        # next step, so that every process takes the same branch.
        stop = self.interrupted is not None
        if trainer.world_size > 1:
            # Every process stops at the same step (the save is collective), whichever got the signal;
            # one small all-reduce per step, as Lightning's own SIGTERM handling does under DDP.
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        last_of_epoch = batch_idx + 1 >= trainer.num_training_batches
        if len(self.pending) >= self.check_every_n_steps or last_of_epoch or stop:
            self.check(trainer)
        if stop:
            path = last_checkpoint_path(trainer)
            trainer.save_checkpoint(path, weights_only=False)  # a full checkpoint, to resume from
            raise TrainingInterrupted(self.interrupted or "SIGTERM", path)

    def check(self, trainer) -> None:
        pending, self.pending = self.pending, []
        finite = torch.stack([loss.float() for *_, loss in pending]).isfinite().tolist()
        if all(finite):
            return
        step, epoch, lr, loss = pending[finite.index(False)]
        writes = getattr(trainer.strategy, "checkpoint_io", None)
        if isinstance(writes, AsyncCheckpointWrites):
            writes.wait()  # a checkpoint still being written is there once this returns
        last = newest_checkpoint_of(last_checkpoint_path(trainer).parent.parent)
        kept = f"The last good checkpoint, {last}, is kept." if last else "No checkpoint was saved before it."
        max_lr = trainer.optimizers[0].param_groups[0].get("max_lr", "?")  # set by OneCycleLR
        raise DivergenceError(
            f"Training diverged: the loss became {float(loss)} at step {step} (epoch {epoch}) with LR {lr:.4g}. "
            f"The likely cause is a max LR too high for this model and batch size: lower model.scheduler.max_lr "
            f"(now {max_lr}). {kept}"
        )


def schedule_of(scheduler_state: dict, param_group: dict) -> dict:
    """What makes two OneCycleLR schedules the same, from its state and its param group."""
    return {
        "total_steps": scheduler_state["total_steps"],
        "peak_step": one_cycle_peak_step(scheduler_state),
        "max_lr": param_group.get("max_lr"),
        "start_lr": param_group.get("initial_lr"),
        "end_lr": param_group.get("min_lr"),
    }


def rng_states() -> dict:
    numpy_state = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict | None) -> None:
    if not states:
        return
    torch.set_rng_state(states["torch"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in states["python"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# --- the config side: which dir and which config a resumed run goes on with ----------------------------

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


def newest_checkpoint_of(run: Path) -> Path | None:
    """The run's newest complete checkpoint: files are only ever moved into place whole, so
    every `.ckpt` there is complete; usually `last.ckpt`, but a run killed while writing it has
    that epoch's best checkpoint newer."""
    found = sorted((run / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def checkpoint_problem(path: Path, resume: str | None = None) -> str | None:
    """Why a checkpoint file cannot be read, or None: a quick look (memory-mapped) before any work."""
    try:
        torch.load(path, map_location="cpu", mmap=True, weights_only=True)["state_dict"]
    except Exception as error:  # noqa: BLE001 - any failure means the file cannot be resumed from
        return unreadable_checkpoint(path, error, resume)
    return None


def unreadable_checkpoint(path: Path, error: BaseException, resume: str | None = None) -> str:
    """What to say of a checkpoint that does not load: what it is likely to be, and the run's others."""
    path = Path(path)
    reason = (str(error).strip().splitlines() or [""])[0].split(". ")[0][:200]  # its first sentence: torch's run long
    others = [p.name for p in sorted(path.parent.glob("*.ckpt")) if p.name != path.name]
    if others and resume:
        fix = (f"resume from another of the run's checkpoints ({', '.join(others)}): "
               f"python src/train.py resume={resume} ckpt_path={path.parent}/<one of them>")
    elif others:
        fix = f"give another checkpoint beside it ({', '.join(others)}): ckpt_path={path.parent}/<one of them>"
    elif resume:
        fix = f"there is no other checkpoint: delete it, and resume={resume} starts the run again from its beginning"
    else:
        fix = "give another checkpoint, or train one: python src/train.py experiment=cpu_fast"
    return (f"{path} cannot be read as a checkpoint ({type(error).__name__}: {reason}): it was cut short (by a crash or a "
            f"full disk) or is not a checkpoint of this project. To go on, {fix}.")


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
    ckpt = Path(ckpt) if ckpt else newest_checkpoint_of(run)
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
        return  # not one of our run dirs: the LightningModule still compares the schedules it can see
    saved = saved_config(run)
    def value(config: DictConfig, key: str):
        # a key that a run's config predates is Lightning's default there
        return OmegaConf.select(config, key, default=1 if key == "trainer.accumulate_grad_batches" else None)

    differs = [f"{key}: {value(saved, key)!r} in the run, {value(cfg, key)!r} now"
               for key in SCHEDULE_KEYS if value(saved, key) != value(cfg, key)]
    if differs:
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path!r}: resuming needs the run's own schedule, and this differs: "
            + "; ".join(differs)
            + f". Resume with `resume={run}` alone (it reuses the saved config), or start a new run."
        )
