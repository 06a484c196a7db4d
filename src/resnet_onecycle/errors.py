"""Errors about the user's input, and the one check of a config value's type and range.

A UserError's message alone says what is wrong and how to fix it: the scripts in src/ print it
without a traceback, exit with its `exit_code` and record its `status` in metrics.json.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class UserError(ValueError):
    """Bad input; printed without a traceback by the scripts in src/."""

    status, exit_code = "refused", 2


class ConfigError(UserError):
    """A config value that cannot work; the message names the key and the fix."""


class DataSourceError(UserError):
    """A data source that cannot be read; the message names the source and the fix."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped training at a step boundary, once `checkpoint` was saved.

    An exception, not `trainer.should_stop`: a stop mid-epoch would still run validation and let
    ModelCheckpoint save over last.ckpt as if the epoch had ended. `cli.run` prints how to resume
    and exits with 130 (SIGINT) or 143 (SIGTERM), as a shell does for a process the signal killed.
    """

    def __init__(self, signal_name: str, checkpoint: Path, epoch: int, step: int) -> None:
        super().__init__(f"interrupted by {signal_name} at epoch {epoch}, step {step}; saved {checkpoint}")
        self.signal_name, self.checkpoint, self.epoch, self.step = signal_name, checkpoint, epoch, step
        self.resume: str | None = None  # the command that continues the run, once its dir is known
        self.exit_code = 130 if signal_name == "SIGINT" else 143


def check(key: str, value, kind: type = int, *, low: float | None = None, above: float | None = None,
          below: float | None = None, optional: bool = False, choices: Iterable | None = None, fix: str = "") -> None:
    """A ConfigError naming `key=value` unless the value is of `kind` and in range.

    `kind` is int (a whole number) or float (any number); True and False are neither. `low` is
    inclusive, `above` and `below` exclusive; `optional` lets None through; `choices` replaces the
    type check. `fix` is said after what the value must be, e.g. "e.g. model.scheduler.max_lr=0.02".
    """
    if optional and value is None:
        return
    if choices is not None:
        choices = tuple(choices)
        if not any(value == c and type(value) is type(c) for c in choices):  # 1 is no True, nor "1" a 1
            named = ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in choices)  # as YAML writes them
            raise ConfigError(f"{key}={value!r}: use {named}{'; ' + fix if fix else ''}.")
        return
    number = isinstance(value, int if kind is int else (int, float)) and not isinstance(value, bool)
    if number and (low is None or value >= low) and (above is None or value > above) \
            and (below is None or value < below):
        return
    bounds = [f">= {low}" if low is not None else "", f"> {above}" if above is not None else "",
              f"< {below}" if below is not None else ""]
    what = " and ".join(b for b in bounds if b)
    raise ConfigError(f"{key}={value!r} must be {'a whole number' if kind is int else 'a number'}"
                      f"{' ' + what if what else ''}{' (or null)' if optional else ''}{'; ' + fix if fix else ''}.")


def require_extra(extra: str, *modules: str, what: str = "this command") -> None:
    """An optional extra's packages, or a one-line error naming the install command, before any work."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigError(f"{what} needs the `{extra}` extra ({module} is not installed): "
                              f"pip install -e '.[{extra}]'.") from error
