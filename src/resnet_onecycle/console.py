"""What reaches the console and the run's log file: the project's lines, not the frameworks' noise."""

from __future__ import annotations

import logging
import warnings


class DropNoise(logging.Filter):
    """Lightning's lines that no user of this project acts on: its advertising tips ("💡 Tip: ...
    litlogger"), the `weights_only` default of a checkpoint it loads itself, and the LR range
    test's temporary checkpoint being restored."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (message.startswith(("💡 Tip", "`weights_only` was not set")) or ".lr_find_" in record.getMessage())


def quiet_console() -> None:
    """Keep the console to the project's progress and results: no third-party tips or INFO lines,
    and none of the warnings that Lightning's own calls raise on every run."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.trainer.connectors.checkpoint_connector"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropNoise) for f in logger.filters):
            logger.addFilter(DropNoise())
    # a line per graph pass (export), per request (the app), per table an MLflow store creates
    for name in ("onnxscript", "onnx_ir", "httpx", "mlflow", "alembic", "wandb"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Epoch-level metrics are logged whatever the interval: an epoch shorter than it loses nothing.
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval", category=Warning)
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


def log_to_file(level: int, message: str) -> None:
    """Into the run's log file (Hydra's file handler: `<run dir>/<task>.log`) only: the console
    has the message already, in the project's words."""
    record = logging.LogRecord("resnet_onecycle", level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
