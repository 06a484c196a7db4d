"""How the scripts in src/ run a task under Hydra.

Hydra parses the command line, composes the config, prints it (`--cfg`), its help and its errors.
This adds what Hydra lacks:
- a mistake on the command line is one `error:` line naming the fix (`overrides.problem`) and
  exit code 2, before the long imports and before any run dir is made;
- bad input found by the task is one `error:` line and its exit code (2; 1 where the input was
  fine and a file could not be written), and `refused` or `failed` in the run's metrics.json;
- a run stopped by SIGINT or SIGTERM says how to resume and exits with 130 or 143;
- in a sweep, a job that fails says so and returns NaN, so that the other jobs still run.
HYDRA_FULL_ERROR=1 leaves every error to Hydra, with its full trace.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from resnet_onecycle.console import log_to_file, quiet_console
from resnet_onecycle.errors import ConfigError, TrainingInterrupted, UserError
from resnet_onecycle.launching import in_sweep, remove_refused_run_dir, set_threads

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def main(config_name: str, task: Callable[[DictConfig], dict], result_key: str | None = None) -> None:
    """What each script in src/ runs: `task` under Hydra with `configs/<config_name>.yaml`."""
    import hydra

    from resnet_onecycle.framework import hydra_arguments
    from resnet_onecycle.rundir import register_resolvers

    args = hydra_arguments(sys.argv[1:])
    check_command_line(config_name, args)
    register_resolvers()
    if not (args.help or args.hydra_help or args.cfg or args.info or args.shell_completion):
        # A job: Lightning imported before Hydra sets up logging keeps its console lines its own,
        # out of the run's log file. Printing need not wait for it (benchmarks/RESULTS.md).
        import lightning.pytorch  # noqa: F401
    hydra.main(version_base="1.3", config_path=str(CONFIGS), config_name=config_name)(
        lambda cfg: run(task, cfg, result_key))()


def check_command_line(config_name: str, args) -> None:
    """A command-line mistake: one `error:` line and exit code 2, before Hydra runs the script."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return
    found = command_line_problem(config_name, args)
    if found:
        print(f"error: {found}", file=sys.stderr)
        sys.exit(2)


def command_line_problem(config_name: str, args) -> str | None:
    """What is wrong with a command line that Hydra parsed (`framework.hydra_arguments`), or None."""
    from resnet_onecycle.overrides import problem

    modes = [mode for mode, given in (("--run", args.run), ("-m", args.multirun), ("--cfg", args.cfg),
                                      ("--info", args.info)) if given]
    if len(modes) > 1:
        fix = "; to see a sweep job's config, drop -m and give each swept key one value" if "-m" in modes else ""
        return f"{' and '.join(modes)} together: Hydra takes one of them at a time{fix}."
    if args.help or args.hydra_help or args.shell_completion or args.info:
        return None
    config_dir = Path(args.config_path) if args.config_path else CONFIGS
    if not config_dir.is_absolute():  # as Hydra reads it: beside the task function's file, this one
        config_dir = Path(__file__).parent / config_dir
    extra = [f"hydra.searchpath=[file://{Path(args.config_dir).resolve()}]"] if args.config_dir else []
    return problem(config_dir, args.config_name or config_name, [*args.overrides, *extra], args.multirun)


def run(task: Callable[[DictConfig], dict], cfg: DictConfig, result_key: str | None = "test/acc") -> float | None:
    """Run `task(cfg)` under Hydra and return the sweep's objective (`result_key` of its summary)."""
    quiet_console()
    try:
        set_threads(cfg)
        summary = task(cfg)
    except TrainingInterrupted as stop:
        # One write: under DDP every process prints this into the same stderr at the same moment.
        message = f"Interrupted by {stop.signal_name} at epoch {stop.epoch}, step {stop.step}; saved {stop.checkpoint}."
        sys.stderr.write(f"\n{message}\nResume with: {stop.resume}\n")
        sys.stderr.flush()
        log_to_file(logging.WARNING, f"{message}\nResume with: {stop.resume}")
        if in_sweep():
            return float("nan")
        sys.exit(stop.exit_code)
    except Exception as raised:  # noqa: BLE001 - sorted out in failed()
        return failed(raised, cfg)
    return summary.get(result_key) if result_key else None


def failed(raised: Exception, cfg: DictConfig) -> float:
    """Record why a task stopped; in a sweep the job's objective is NaN, else the script exits (or raises)."""
    from resnet_onecycle.summary import record_failure

    error = as_user_error(raised, cfg.paths.output_dir)
    told = isinstance(error, UserError)  # the message says it all; a traceback would bury it
    detail = str(error) if told else traceback.format_exc()
    log_to_file(logging.ERROR, detail)
    record_failure(Path(cfg.paths.output_dir), error, detail)
    if in_sweep():
        from hydra.core.hydra_config import HydraConfig

        print(f"\nerror: job {HydraConfig.get().job.num} failed: {error}", file=sys.stderr)
        return float("nan")
    if told and os.environ.get("HYDRA_FULL_ERROR") != "1":
        print(f"\nerror: {error}", file=sys.stderr)  # on its own line, whatever a progress bar left
        if error.status == "refused":
            remove_refused_run_dir(Path(cfg.paths.output_dir), cfg.task_name)
        sys.exit(error.exit_code)
    raise raised


def as_user_error(error: BaseException, output_dir: str | Path = ".") -> BaseException:
    """The user's mistake inside an exception raised for it: a UserError that Hydra's instantiate
    wrapped ("Error in call to target ..."), Lightning's refusal of a GPU trainer without a GPU, or a
    full disk."""
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from resnet_onecycle.files import write_error

    cause = error.__cause__ if isinstance(error, InstantiationException) else error
    if isinstance(cause, UserError):
        return cause
    if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):  # a write elsewhere (TensorBoard's)
        return write_error(Path(cause.filename or output_dir), cause)
    if isinstance(cause, MisconfigurationException) and "gpu" in str(cause).lower():
        return ConfigError(f"trainer.accelerator=gpu (trainer=gpu or trainer=ddp) needs a CUDA GPU, and none is visible "
                           f"({cause}): use trainer=default, which takes what the machine has, or trainer=cpu.")
    return error
