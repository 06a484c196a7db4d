"""Diagnostic callback: where an epoch's wall time goes (train steps, validation, the rest)."""
import time

import lightning as L
import torch


class EpochParts(L.Callback):
    def __init__(self, sync: bool = False):
        self.sync, self.t = sync, {}

    def mark(self, name):
        if self.sync and torch.cuda.is_available():
            torch.cuda.synchronize()
        self.t[name] = time.perf_counter()

    def on_train_epoch_start(self, trainer, module):
        prev = dict(self.t)
        self.mark("start")
        if "val_end" in prev:
            e = trainer.current_epoch - 1
            print(f"PARTS epoch {e} train {prev['val_start'] - prev['start']:.3f} val {prev['val_end'] - prev['val_start']:.3f} "
                  f"after {self.t['start'] - prev['val_end']:.3f} cycle {self.t['start'] - prev['start']:.3f}", flush=True)

    def on_validation_start(self, trainer, module):
        if not trainer.sanity_checking:
            self.mark("val_start")

    def on_validation_end(self, trainer, module):
        if not trainer.sanity_checking:
            self.mark("val_end")
