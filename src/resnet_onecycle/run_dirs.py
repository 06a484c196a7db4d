"""The dir a run writes into: the resolvers `configs/hydra/default.yaml` names, registered on import.
A resumed training run (resume=<dir>, or ckpt_path inside a run dir) goes on in its own dir. Kept
free of heavy imports: the scripts register these before Hydra starts, and import Lightning only
once the command line has passed its check (`cli.main`)."""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import OmegaConf


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
