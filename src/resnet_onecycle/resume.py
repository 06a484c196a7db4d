"""The callbacks that stop a run only where its saved state is good, and put a resumed run back exactly.

Each does one thing, under its own key in `configs/callbacks/default.yaml`:
- `StopOnSignal`: SIGINT or SIGTERM save `last.ckpt` at a step boundary and stop the run.
- `DivergenceGuard`: a non-finite loss stops the run before any checkpoint is saved after it.
- `RandomStates`: every checkpoint carries the random generators, put back when training resumes.
- `LoggedMetrics`: every checkpoint carries the metrics logged so far.
- `SameSchedule`: a checkpoint of another one-cycle schedule is refused.

The batch position inside an epoch is the DataModule's checkpoint state, the epoch Lightning's;
the run dir and config a resumed run goes on with are `rundir.py`'s.

Lightning's own SIGTERM handling (2.6) stops at a step boundary too, but it leaves SIGINT to
KeyboardInterrupt, raised wherever the step happens to be, and exits with 0 or 1: one handler for
both signals keeps a saved state good and an exit code a scheduler can read (docs/design.md).
"""

from __future__ import annotations

import math
import random
import signal
from pathlib import Path

import lightning as L
import numpy as np
import torch

from resnet_onecycle.callbacks import AsyncCheckpointWrites
from resnet_onecycle.checkpoints import resumable_checkpoint
from resnet_onecycle.errors import ConfigError, TrainingInterrupted, UserError, check
from resnet_onecycle.framework import one_cycle_peak_step
from resnet_onecycle.summary import final_metrics


class DivergenceError(UserError):
    """The loss became non-finite; the message names the step, the LR and the likely cause."""


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    callback = trainer.checkpoint_callback
    if callback is not None and callback.dirpath:
        return Path(callback.dirpath) / "last.ckpt"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


class StopOnSignal(L.Callback):
    """SIGINT (Ctrl-C) or SIGTERM (what SLURM sends before pre-emption) during training: the step
    in flight finishes, `last.ckpt` is saved there (the batch order is resumable mid-epoch), and
    TrainingInterrupted is raised out of `Trainer.fit`. It runs after every other callback
    (`in_run_order`), so the saved step is one they have all seen."""

    def __init__(self) -> None:
        self.interrupted: str | None = None
        self.previous_handlers: dict[int, object] = {}

    def on_train_start(self, trainer, module) -> None:
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

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        # Decide once, from one reading of the flag: a signal landing after this line waits for the
        # next step, so that every process takes the same branch.
        stop = self.interrupted is not None
        if trainer.world_size > 1:
            # Every process stops at the same step (the save is collective), whichever got the signal;
            # one small all-reduce per step, as Lightning's own SIGTERM handling does under DDP.
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            path = last_checkpoint_path(trainer)
            trainer.save_checkpoint(path, weights_only=False)  # a full checkpoint, to resume from
            raise TrainingInterrupted(self.interrupted or "SIGTERM", path, trainer.current_epoch, trainer.global_step)


def in_run_order(callbacks: list[L.Callback]) -> list[L.Callback]:
    """StopOnSignal last: its save comes once every other callback has seen the step (a weight
    average's update included), and after the divergence guard has the step's loss."""
    return sorted(callbacks, key=lambda callback: isinstance(callback, StopOnSignal))


class DivergenceGuard(L.Callback):
    """A non-finite loss stops the run with a DivergenceError naming the step and its LR.

    Losses stay on the device and are read back only every `check_every_n_steps` steps, at the
    last step of each epoch (before validation and checkpointing) and before any save, so the
    guard costs one host sync per check, and no checkpoint is saved after a non-finite loss."""

    def __init__(self, check_every_n_steps: int = 50) -> None:
        check("callbacks.divergence_guard.check_every_n_steps", check_every_n_steps, low=1)
        self.check_every_n_steps = check_every_n_steps
        self.pending: list[tuple[int, int, float, torch.Tensor]] = []  # (step, epoch, lr, loss)
        self.step_lr = float("nan")

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.step_lr = trainer.optimizers[0].param_groups[0]["lr"]  # the scheduler moves it after the step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        # global_step already counts this step
        self.pending.append((trainer.global_step - 1, trainer.current_epoch, self.step_lr, loss.detach()))
        if len(self.pending) >= self.check_every_n_steps or batch_idx + 1 >= trainer.num_training_batches:
            self.check(trainer)

    def on_save_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        if self.pending:  # a timed save or a stop mid-epoch: never over a loss already non-finite
            self.check(trainer)

    def check(self, trainer) -> None:
        pending, self.pending = self.pending, []
        finite = torch.stack([loss.float() for *_, loss in pending]).isfinite().tolist()
        if all(finite):
            return
        step, epoch, lr, loss = pending[finite.index(False)]
        writes = getattr(trainer.strategy, "checkpoint_io", None)
        if isinstance(writes, AsyncCheckpointWrites):
            writes.wait()  # a checkpoint still being written is there once this returns
        last = resumable_checkpoint(last_checkpoint_path(trainer).parent.parent)
        kept = f"The last good checkpoint, {last}, is kept." if last else "No checkpoint was saved before it."
        max_lr = trainer.optimizers[0].param_groups[0].get("max_lr", "?")  # set by OneCycleLR
        raise DivergenceError(
            f"Training diverged: the loss became {float(loss)} at step {step} (epoch {epoch}) with LR {lr:.4g}. "
            f"The likely cause is a max LR too high for this model and batch size: lower model.scheduler.max_lr "
            f"(now {max_lr}). {kept}"
        )


class RandomStates(L.Callback):
    """The random generators' states (torch, numpy, python, CUDA) in every checkpoint, put back
    when training resumes, so a resumed run draws the same augmentations as an uninterrupted one."""

    def __init__(self) -> None:
        self.to_restore: dict | None = None

    def state_dict(self) -> dict:
        numpy_state = np.random.get_state()
        states = {"torch": torch.get_rng_state(), "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
                  "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            states["cuda"] = torch.cuda.get_rng_state_all()
        return states

    def load_state_dict(self, state_dict: dict) -> None:
        self.to_restore = state_dict  # put back when training starts, after model set-up drew from the generators

    def on_train_start(self, trainer, module) -> None:
        states, self.to_restore = self.to_restore, None
        if not states:
            return
        torch.set_rng_state(states["torch"])
        name, keys, *rest = states["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
        random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in states["python"]))
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])


class LoggedMetrics(L.Callback):
    """The metrics logged so far in every checkpoint, so that a run resumed from its final epoch's
    checkpoint (killed while testing or writing its pictures) reports the fit's metrics all the same."""

    def __init__(self) -> None:
        self.trainer: L.Trainer | None = None
        self.to_restore: dict[str, float] = {}

    def setup(self, trainer, module, stage: str) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict:
        metrics = final_metrics(self.trainer) if self.trainer is not None else {}
        return {k: v for k, v in metrics.items() if not k.startswith("test/")}

    def load_state_dict(self, state_dict: dict) -> None:
        self.to_restore = dict(state_dict)

    def on_fit_end(self, trainer, module) -> None:
        # A fit resumed from its final epoch logs nothing: the checkpoint's stand. Any epoch that
        # ran logged its own over them.
        for key, value in self.to_restore.items():
            trainer.callback_metrics.setdefault(key, torch.tensor(value))
        self.to_restore = {}


class SameSchedule(L.Callback):
    """A checkpoint whose OneCycleLR state is another schedule than this run's is refused, naming
    what differs. `rundir.check_same_schedule` compares configs before any work; this compares the
    checkpoint's own state, for a checkpoint from outside a run dir."""

    def __init__(self) -> None:
        self.saved: dict | None = None

    def on_load_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        schedulers, optimizers = checkpoint.get("lr_schedulers"), checkpoint.get("optimizer_states")
        if schedulers and optimizers and "total_steps" in schedulers[0]:
            self.saved = schedule_of(schedulers[0], optimizers[0]["param_groups"][0])

    def on_fit_start(self, trainer, module) -> None:
        # After configure_optimizers, before Lightning loads the saved scheduler state over the new
        # one: a state from another schedule would carry the old total_steps and fail later.
        saved, self.saved = self.saved, None
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


def schedule_of(scheduler_state: dict, param_group: dict) -> dict:
    """What makes two OneCycleLR schedules the same, from its state and its param group."""
    return {
        "total_steps": scheduler_state["total_steps"],
        "peak_step": one_cycle_peak_step(scheduler_state),
        "max_lr": param_group.get("max_lr"),
        "start_lr": param_group.get("initial_lr"),
        "end_lr": param_group.get("min_lr"),
    }
