"""Hydra callbacks: checks that must run before Hydra itself writes anything."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def make_dir_or_exit(path: str, what: str) -> None:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
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


class SweepSummary(Callback):
    """When a multirun ends: summary.csv, summary.md and summary.png in the sweep dir.

    The process then exits with 1 if any job did not complete, so a script sees the failure.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from resnet_onecycle.sweep_summary import write_summary

        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        _, rows = write_summary(sweep_dir)
        failed = [r["job"] for r in rows if r["status"] != "completed"]
        print(f"Sweep summary: {sweep_dir / 'summary.md'} ({len(rows)} jobs, {len(failed)} not completed)")
        if failed:
            print(f"error: jobs {failed} did not complete; see {sweep_dir / 'summary.md'}", file=sys.stderr)
            sys.exit(1)
