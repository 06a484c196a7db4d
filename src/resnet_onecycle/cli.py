"""How the scripts in src/ run a task: errors, exit codes, and sweep jobs that fail."""

from __future__ import annotations

import errno
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, read_write

from resnet_onecycle.errors import ConfigError, UserError
from resnet_onecycle.files import WriteError, write_error


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def record_failure(output_dir: Path, error: BaseException) -> None:
    """metrics.json says the run was refused (bad input) or failed, and why, unless the dir already
    holds a verdict (the task's own, or that of the run a resume continues), which stays as it is;
    `running` is no verdict. The message also goes to the run's log file (`train.log`)."""
    from resnet_onecycle.summary import first_process, status_of, write_metrics

    told = isinstance(error, UserError)  # the message says it all
    detail = str(error) if told else traceback.format_exc()
    log_to_file(logging.ERROR, detail)
    if status_of(output_dir) not in (None, "running") or not first_process():
        return
    try:
        write_metrics(output_dir, {"status": getattr(error, "status", "refused") if told else "failed", "error": detail})
    except WriteError:
        pass  # the disk that failed the run: metrics.json still says `running`, i.e. not finished


def log_to_file(level: int, message: str) -> None:
    """Into the run's log file (Hydra's file handler: `<run dir>/<task>.log`) only: the console
    has the message already, in the project's words."""
    record = logging.LogRecord("resnet_onecycle", level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


class DropTips(logging.Filter):
    """Lightning's advertising tips ("💡 Tip: ... litlogger"): nothing a user of this project acts on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_console() -> None:
    """Keep the console to the project's progress and results: no third-party tips, and none of the
    deprecation warnings that Lightning's own calls into torch raise on every run."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropTips) for f in logger.filters):
            logger.addFilter(DropTips())
    # Lightning 2.6 asks torch's pytree for `LeafSpec`, which torch >= 2.10 deprecates
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=Warning)
    # Two that are not true of a resumed run here: its checkpoint dir with files in it is its own (every
    # run has a dir of its own), and a mid-epoch resume is exact, since the DataModule carries the
    # batches' position (data/cifar10.py, tests/test_resume.py).
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty", category=Warning)
    warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended",
                            category=Warning)
    # The warnings that remain go through logging: to the console and into the run's log file.
    logging.captureWarnings(True)


# Hydra's flags this check understands, and whether each takes a value; with any other flag
# (--help, --info, --config-dir, ...) Hydra has the command line to itself.
FLAGS = {"-m": False, "--multirun": False, "--resolve": False, "-c": True, "--cfg": True, "-p": True, "--package": True}
# Hydra's modes, of which it runs one at a time; all but -r and -m print and exit without running the job
MODES = {"-r": "--run", "--run": "--run", "-m": "-m", "--multirun": "-m", "-c": "--cfg", "--cfg": "--cfg",
         "-i": "--info", "--info": "--info", "-sc": "--shell-completion", "--shell-completion": "--shell-completion"}
PRINT_ONLY = {flag for flag, mode in MODES.items() if mode not in ("--run", "-m")} | {"-h", "--help", "--hydra-help"}
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def command_line_error(config_name: str, args: list[str]) -> str | None:
    """What is wrong with these command-line overrides, in the project's words, or None.

    Composes the config with Hydra's compose API, as the script is about to: unknown keys (with
    the nearest real key), unknown config group options (with the options there are), unparsable
    overrides, and `+key=` additions that the component under them does not accept. A sweep's
    overrides are checked with their first value.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    modes = sorted({MODES[arg.split("=")[0]] for arg in args if arg.split("=")[0] in MODES})
    if len(modes) > 1:
        fix = "; to see a sweep job's config, drop -m and give each swept key one value" if "-m" in modes else ""
        return (f"{' and '.join(modes)} together: Hydra takes one of --run, -m, --cfg, --info and --shell-completion "
                f"at a time{fix}.")
    overrides, rest = [], iter(args)
    for arg in rest:
        if arg.startswith("-"):
            if arg not in FLAGS:
                return None
            if FLAGS[arg]:
                next(rest, None)
            continue
        overrides.append(arg)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as error:
        return f"{str(error).splitlines()[0]}: write key=value, e.g. model.scheduler.max_lr=0.05."
    single = []
    for override in parsed:
        if override.is_sweep_override():
            try:
                first = next(iter(override.sweep_string_iterator()))
            except (HydraException, StopIteration, TypeError):
                continue  # interval() and other sweeps a sweeper draws from: Hydra checks those
            single.append(f"{override.get_key_element()}={first}")
        else:
            single.append(override.input_line)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        try:
            cfg = compose(config_name, overrides=single, return_hydra_config=True)
        except HydraException:
            return explain_failure(config_name, single)
        for override in single:
            if override.startswith("+"):
                problem = unaccepted_addition(cfg, override.split("=", 1)[0].lstrip("+"))
                if problem:
                    return problem
    GlobalHydra.instance().clear()
    if cfg.get("resume"):  # Hydra would make the dir it names
        from resnet_onecycle.resume import resume_problem

        return resume_problem(cfg.resume)
    return None


def explain_failure(config_name: str, overrides: list[str]) -> str:
    """Which override makes composition fail, and the fix: the first one that does."""
    import difflib

    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, MissingConfigException

    good: list[str] = []
    for override in overrides:
        try:
            compose(config_name, overrides=[*good, override], return_hydra_config=True)
            good.append(override)
            continue
        except MissingConfigException as error:
            group, option = override.lstrip("+~").split("=", 1)
            options = GlobalHydra.instance().config_loader().get_group_options(group)
            if not options:
                return f"{override}: {group} is not a config group of {config_name}.yaml."
            if option not in options:
                return f"{override}: no such option in {group}; choose one of: {', '.join(options)}."
            # the option exists, and something it names does not (a launcher or sweeper plugin not installed)
            return (f"{override}: {str(error).splitlines()[0]} (the launchers and sweepers come with "
                    "pip install -e '.[sweep]').")
        except HydraException as error:
            key = override.lstrip("+~").split("=", 1)[0]
            cfg = compose(config_name, overrides=good, return_hydra_config=True)
            keys = config_keys(cfg)
            if key not in keys and not override.startswith(("+", "~")):
                near = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
                hint = f"did you mean {near[0]}?" if near else f"python src/{config_name}.py --cfg job lists the keys."
                return f"{override}: {key} is not a config key; {hint}"
            return f"{override}: {str(error).splitlines()[0]}"
    return "the command line does not compose into a config; HYDRA_FULL_ERROR=1 shows why."


def config_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in cfg.keys():
        path = f"{prefix}{key}"
        keys.append(path)
        node = cfg._get_node(key)
        if isinstance(node, DictConfig):
            keys += config_keys(node, f"{path}.")
    return keys


def unaccepted_addition(cfg: DictConfig, key: str) -> str | None:
    """For `+key=...` under a component (`_target_`): the error when the component takes no such argument."""
    import difflib
    import inspect

    from hydra.utils import get_object

    parts = key.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        node = OmegaConf.select(cfg, ".".join(parts[:depth]))
        if not (isinstance(node, DictConfig) and "_target_" in node):
            continue
        argument = parts[depth]
        if argument.startswith("_"):
            return None
        try:
            parameters = inspect.signature(get_object(node._target_)).parameters
        except (ImportError, ValueError, TypeError, AttributeError):
            return None
        if argument in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return None
        names = [n for n in parameters if n not in ("self", "args", "kwargs")]
        near = difflib.get_close_matches(argument, names, n=1, cutoff=0.6)
        return (f"+{key}: {node._target_} takes no argument {argument!r}"
                + (f"; did you mean {'.'.join(parts[:depth])}.{near[0]}?" if near else f"; it takes: {', '.join(names)}."))
    return None


def check_command_line(config_name: str) -> None:
    """Before Hydra runs the script: a command-line mistake is one `error:` line and exit code 2
    (HYDRA_FULL_ERROR=1 leaves every error to Hydra, with its full trace)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return
    problem = command_line_error(config_name, sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)


def as_user_error(error: BaseException, output_dir: str | Path = ".") -> BaseException:
    """The user's mistake inside an exception raised for it: a UserError that Hydra's instantiate
    wrapped ("Error in call to target ..."), Lightning's refusal of a GPU trainer without a GPU, or a
    full disk."""
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    cause = error.__cause__ if isinstance(error, InstantiationException) else error
    if isinstance(cause, UserError):
        return cause
    if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):  # a write elsewhere (TensorBoard's)
        return write_error(Path(cause.filename or output_dir), cause)
    if isinstance(cause, MisconfigurationException) and "gpu" in str(cause).lower():
        return ConfigError(f"trainer.accelerator=gpu (trainer=gpu or trainer=ddp) needs a CUDA GPU, and none is visible "
                           f"({cause}): use trainer=default, which takes what the machine has, or trainer=cpu.")
    return error


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
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"num_threads={threads!r} must be a whole number >= 1, or null (torch's default).")
    if threads is None and in_sweep():
        threads = threads_per_job(HydraConfig.get().launcher)
    if threads:
        torch.set_num_threads(int(threads))


def run(task: Callable[[DictConfig], dict], cfg: DictConfig, result_key: str | None = "test/acc") -> float | None:
    """Run `task(cfg)` for a script and return the sweep's objective (`result_key` of its summary).

    Bad input prints one line and exits with 2; an interrupted run prints how to resume and exits
    with 130 (SIGINT) or 143 (SIGTERM). A run refused or failing for any reason says so in its
    metrics.json (`refused` or `failed`, with the error) and its log file; in a sweep it returns
    NaN, so the other jobs still run and count.
    """
    quiet_console()
    try:
        set_threads(cfg)
        summary = task(cfg)
    except Exception as raised:  # noqa: BLE001 - sorted out below
        error = as_user_error(raised, cfg.paths.output_dir)
        record_failure(Path(cfg.paths.output_dir), error)
        if in_sweep():
            print(f"\nerror: job {HydraConfig.get().job.num} failed: {error}", file=sys.stderr)
            return float("nan")
        if isinstance(error, UserError) and os.environ.get("HYDRA_FULL_ERROR") != "1":
            # the message says it all; a traceback would bury it
            print(f"\nerror: {error}", file=sys.stderr)  # on its own line, whatever a progress bar left
            sys.exit(getattr(error, "exit_code", 2))
        raise raised
    if summary.get("status") == "interrupted":
        # One write: under DDP every process prints this into the same stderr at the same moment.
        message = (f"Interrupted by {summary['signal']} at epoch {summary['epochs']}, step {summary['global_steps']}; "
                   f"saved {summary['checkpoint']}.\nResume with: {summary['resume']}")
        sys.stderr.write(f"\n{message}\n")
        sys.stderr.flush()
        log_to_file(logging.WARNING, message)
        if not in_sweep():
            sys.exit(130 if summary["signal"] == "SIGINT" else 143)
    if summary.get("unreadable") and not in_sweep():  # predict.py: the readable files are done, some were not
        sys.exit(1)
    return summary.get(result_key) if result_key else None


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


class JobsAtOnce(Callback):
    """The local submitit launcher starts every job of a batch at once, and Hydra's basic sweeper
    hands it the whole sweep as one batch: on a small machine the jobs then fight for its cores
    (two jobs on 2 cores took 41 s together against 20 s one after the other). Unless
    `hydra.sweeper.max_batch_size` is given, a batch is as many jobs as the cores hold at
    `hydra.launcher.cpus_per_task` each (all of them when unset: one job at a time)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        launcher, sweeper = config.hydra.launcher, config.hydra.sweeper
        if not str(launcher.get("_target_", "")).endswith("submitit_launcher.LocalLauncher"):
            return
        if "max_batch_size" in sweeper and sweeper.max_batch_size is None:  # the basic sweeper's knob
            with read_write(sweeper):
                sweeper.max_batch_size = max(1, cores() // (launcher.get("cpus_per_task") or cores()))


def main(config_name: str, task: str, result_key: str | None = None) -> None:
    """What each script in src/ runs: the command-line check, then the function `task` of
    `resnet_onecycle.tasks` under Hydra with the config `configs/<config_name>.yaml` (the log file
    is `<task_name>.log`)."""
    import importlib

    import hydra

    check_command_line(config_name)
    # Only now, and only for a job: importing Lightning takes seconds, which a mistyped override or
    # `--cfg job` need not wait for (benchmarks/RESULTS.md, "Figures the code and docs cite"). The
    # tasks register the run-dir resolvers (resume.py) a job needs; printing needs none. Imported
    # before Hydra sets up logging, so Lightning's console lines stay its own, out of the run's log.
    printing = any(arg.split("=")[0] in PRINT_ONLY for arg in sys.argv[1:])
    tasks = None if printing else importlib.import_module("resnet_onecycle.tasks")
    hydra.main(version_base="1.3", config_path=str(CONFIGS), config_name=config_name)(
        lambda cfg: run(getattr(tasks, task), cfg, result_key))()
