"""Where each epoch's wall time goes: the training steps, validation, and what follows validation
until the next epoch starts (checkpoint writes, epoch-end logging). A callback for src/train.py,
written as JSON when fit ends:

    PYTHONPATH=benchmarks python src/train.py experiment=original trainer=gpu test=false \\
        +callbacks.epoch_parts._target_=epoch_parts.EpochParts +callbacks.epoch_parts.path=parts.json

The marks are host times and do not wait for the GPU (a wait would change what is measured);
`+callbacks.epoch_parts.sync=true` waits at each mark, which splits the parts exactly but lets
no epoch's work overlap the next. Over a whole epoch the two agree: the host cannot run more than
a few steps ahead of the GPU.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import lightning as L
import torch


class EpochParts(L.Callback):
    def __init__(self, path: str, sync: bool = False) -> None:
        self.path, self.sync = Path(path), sync
        self.marks: dict[str, float] = {}
        self.epochs: list[dict] = []

    def mark(self, name: str, module: L.LightningModule) -> None:
        if self.sync and module.device.type == "cuda":
            torch.cuda.synchronize(module.device)
        self.marks[name] = time.perf_counter()

    def close_epoch(self, epoch: int, module: L.LightningModule) -> None:
        marks = self.marks
        if {"start", "val_start", "val_end"} <= marks.keys():
            self.mark("next", module)
            self.epochs.append({
                "epoch": epoch,
                "train_s": round(marks["val_start"] - marks["start"], 4),
                "val_s": round(marks["val_end"] - marks["val_start"], 4),
                "after_val_s": round(marks["next"] - marks["val_end"], 4),
                "epoch_s": round(marks["next"] - marks["start"], 4),
            })
        self.marks = {}

    def on_train_epoch_start(self, trainer, module) -> None:
        self.close_epoch(trainer.current_epoch - 1, module)
        self.mark("start", module)

    def on_validation_start(self, trainer, module) -> None:
        if not trainer.sanity_checking:
            self.mark("val_start", module)

    def on_validation_end(self, trainer, module) -> None:
        if not trainer.sanity_checking:
            self.mark("val_end", module)

    def on_fit_end(self, trainer, module) -> None:
        self.close_epoch(trainer.current_epoch - 1, module)  # the last epoch ends with fit
        steady = self.epochs[1:] or self.epochs  # the first epoch holds start-up and autotuning
        median = {key: round(statistics.median(e[key] for e in steady), 4)
                  for key in ("train_s", "val_s", "after_val_s", "epoch_s")} if steady else {}
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"sync": self.sync, "median_after_first": median,
                                             "epochs": self.epochs}, indent=2) + "\n")
