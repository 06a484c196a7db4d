"""Hydra callbacks and settings for where runs go and how a sweep's jobs share the machine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, read_write

from resnet_onecycle.errors import check


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_job(launcher: DictConfig) -> int | None:
    """Torch CPU threads for one job of a sweep whose jobs run side by side on this machine, so
    that they share its cores: cores / n_jobs under the joblib launcher (whose workers would get
    1 thread each), `cpus_per_task` under the local submitit launcher; None elsewhere."""
    target = str(launcher.get("_target_", ""))
    if target.endswith("JoblibLauncher"):
        jobs = launcher.get("n_jobs") or 1
        return max(1, cores() // (cores() if jobs < 0 else jobs))
    if target.endswith("submitit_launcher.LocalLauncher"):
        return launcher.get("cpus_per_task") or None
    return None


def set_threads(cfg: DictConfig) -> None:
    """`num_threads` when given, else the share of the cores a parallel sweep job gets."""
    import torch

    threads = cfg.get("num_threads")
    check("num_threads", threads, low=1, optional=True, fix="null is torch's default")
    if threads is None and in_sweep():
        threads = threads_per_job(HydraConfig.get().launcher)
    if threads:
        torch.set_num_threads(int(threads))


made_run_dir: Path | None = None  # the run dir this command made (not one a resume continues)


def remove_refused_run_dir(output_dir: Path, task_name: str) -> bool:
    """A refused command leaves nothing behind: the run dir it made goes, if it holds only what Hydra
    wrote (its config, the log) and metrics.json. A dir with anything else in it (a picture, a
    checkpoint) or that this command did not make (a resumed run's) stays."""
    import shutil

    if made_run_dir is None or made_run_dir.resolve() != Path(output_dir).resolve():
        return False
    if any(p.name not in (".hydra", f"{task_name}.log", "metrics.json") for p in Path(output_dir).iterdir()):
        return False
    shutil.rmtree(output_dir, ignore_errors=True)
    return True


def make_dir_or_exit(path: str, what: str) -> None:
    global made_run_dir
    if what == "run dir" and not Path(path).exists():
        made_run_dir = Path(path)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):  # Hydra's log file would fail there with a traceback
            raise PermissionError(13, "not writable")
    except OSError as error:
        print(
            f"error: cannot create the {what} {path} ({error.strerror or error}). "
            "Point paths.log_dir at a folder you can write, e.g. paths.log_dir=$HOME/resnet-logs.",
            file=sys.stderr,
        )
        sys.exit(2)


class CheckLogDir(Callback):
    """A logs dir that cannot be written is a one-line error, not a traceback from Hydra.

    The default dirs go through `${hydra:runtime.cwd}`, which resolves only once Hydra's config
    singleton is set; Hydra sets it after these hooks, with this same config, so it is set here.
    """

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        HydraConfig.instance().set_config(config)
        make_dir_or_exit(config.hydra.run.dir, "run dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        HydraConfig.instance().set_config(config)
        make_dir_or_exit(config.hydra.sweep.dir, "sweep dir")


class JobsAtOnce(Callback):
    """The local submitit launcher starts every job of a batch at once, and Hydra's basic sweeper
    hands it the whole sweep as one batch: on a small machine the jobs then fight for its cores
    (docs/design.md, "Sweeps on one machine"). Unless `hydra.sweeper.max_batch_size`
    is given, a batch is as many jobs as the cores hold at `hydra.launcher.cpus_per_task` each (all
    of them when unset: one job at a time)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        launcher, sweeper = config.hydra.launcher, config.hydra.sweeper
        if not str(launcher.get("_target_", "")).endswith("submitit_launcher.LocalLauncher"):
            return
        if "max_batch_size" in sweeper and sweeper.max_batch_size is None:  # the basic sweeper's knob
            with read_write(sweeper):
                sweeper.max_batch_size = max(1, cores() // (launcher.get("cpus_per_task") or cores()))
