"""Training callbacks that are not resume (see resume.py): the LR log, throughput, weight
averaging, lookahead, the last.ckpt schedule and the checkpoint writer."""

from __future__ import annotations

import copy
import logging
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops, measure_flops
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning_utilities.core.apply_func import apply_to_collection

from resnet_onecycle.errors import check
from resnet_onecycle.files import written_whole
from resnet_onecycle.framework import keep_average_on

log = logging.getLogger(__name__)


class LearningRates(L.Callback):
    """Lightning's LearningRateMonitor values (`lr-SGD`, `lr-SGD-momentum`, every
    `trainer.log_every_n_steps` steps), read from the optimizer's floats: the monitor also copies
    each to the device as a tensor, a host sync on a GPU (Lightning-AI/pytorch-lightning#17626;
    benchmarks/RESULTS.md)."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if (trainer.global_step + 1) % trainer.log_every_n_steps or not trainer.loggers:
            return
        stats = {}
        for optimizer in trainer.optimizers:
            name = f"lr-{type(optimizer).__name__}"
            groups = optimizer.param_groups
            for i, group in enumerate(groups):
                key = name if len(groups) == 1 else f"{name}/{group.get('name', f'pg{i + 1}')}"  # as Lightning names them
                stats[key] = group["lr"]
                momentum = group["betas"][0] if "betas" in group else group.get("momentum")
                if momentum is not None:
                    stats[f"{key}-momentum"] = momentum
        for logger in trainer.loggers:
            logger.log_metrics(stats, step=trainer.global_step)


class Throughput(L.Callback):
    """Images per second of each epoch's training steps (`train/images_per_s`, in TensorBoard and
    metrics.json) and, where the device's peak is known, the model FLOPs utilisation (`train/mfu`):
    the FLOPs of one training image (forward and backward, counted by torch.utils.flop_counter
    through Lightning's `measure_flops`) times images/s, over the peak for the run's precision
    (Lightning's `get_available_flops`, or `peak_flops` where Lightning's table lacks the device).

    Timed from the epoch's first step to the end of its last, with one device sync at each end:
    the guard reads the losses there anyway (resume.DivergenceGuard), so no step waits on the GPU for it.
    Lightning's ThroughputMonitor would sync after every step."""

    def __init__(self, peak_flops: float | None = None) -> None:
        check("callbacks.throughput.peak_flops", peak_flops, float, above=0, optional=True,
              fix="the device's FLOP/s, e.g. 9.9e14; null: Lightning's table")
        self.peak_flops = peak_flops
        self.flops_per_image: int | None = None
        self.images, self.start = 0, None
        self.epochs: list[dict] = []  # per epoch: images_per_s (and mfu)

    def on_fit_start(self, trainer, module) -> None:
        net = copy.deepcopy(module.net).to("meta")
        x = torch.zeros(1, 3, 32, 32, device="meta")
        self.flops_per_image = measure_flops(net, lambda: net(x), lambda y: y.sum())
        device = trainer.strategy.root_device
        dtype = torch.bfloat16 if str(trainer.precision).startswith("bf16") else torch.float32
        if self.peak_flops is None and device.type == "cuda":
            self.peak_flops = get_available_flops(device, dtype)
        log.info("FLOPs of one training image (forward and backward): %.4g%s", self.flops_per_image,
                 f"; device peak {self.peak_flops:.4g} FLOP/s" if self.peak_flops else "")

    def sync(self, trainer) -> float:
        device = trainer.strategy.root_device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, module) -> None:
        self.images, self.start = 0, self.sync(trainer)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.images += len(batch[1]) * trainer.world_size
        if batch_idx + 1 >= trainer.num_training_batches and self.start is not None:
            seconds, self.start = self.sync(trainer) - self.start, None
            epoch = {"epoch": trainer.current_epoch, "images_per_s": round(self.images / seconds, 1)}
            if self.peak_flops:
                epoch["mfu"] = round(self.images * self.flops_per_image / seconds / self.peak_flops, 4)
            self.epochs.append(epoch)

    def on_train_epoch_end(self, trainer, module) -> None:
        if self.epochs and self.epochs[-1]["epoch"] == trainer.current_epoch:
            for key in ("images_per_s", "mfu"):
                if key in self.epochs[-1]:
                    module.log(f"train/{key}", self.epochs[-1][key], sync_dist=True)  # the processes' mean, once an epoch

    def summary(self) -> dict:
        """For metrics.json: the FLOPs of a training image and each epoch's images/s (and MFU)."""
        rates = [e["images_per_s"] for e in self.epochs]
        return {"flops_per_training_image": self.flops_per_image, "throughput_per_epoch": self.epochs,
                "images_per_s_median": round(statistics.median(rates), 1) if rates else None}

    def state_dict(self) -> dict:
        return {"epochs": self.epochs}

    def load_state_dict(self, state_dict: dict) -> None:
        self.epochs = list(state_dict.get("epochs", []))


class RunLength(L.Callback):
    """Says, once, how long the whole fit's training steps will take: after `after_s` seconds of
    steps (the first step, which holds the warm-up, left out), or at the first epoch's end. On a
    CPU, a fit of over an hour also names the recipe made for one. No device sync: on a GPU the
    host runs ahead of the steps by a few at most, a small error over seconds."""

    def __init__(self, after_s: float = 10.0) -> None:
        check("callbacks.run_length.after_s", after_s, float, low=0)
        self.after_s = after_s
        self.start: tuple[int, float] | None = None  # (step, time) at the end of the first step
        self.said = False

    def on_train_start(self, trainer, module) -> None:
        self.start, self.said = None, False

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.said:
            return
        now, step = time.perf_counter(), trainer.global_step
        if self.start is None:
            self.start = (step, now)
            return
        steps, seconds = step - self.start[0], now - self.start[1]
        if steps and (seconds >= self.after_s or batch_idx + 1 >= trainer.num_training_batches):
            self.said = True
            total = seconds / steps * trainer.estimated_stepping_batches  # at the steady rate
            device = trainer.strategy.root_device.type
            hint = (" On a CPU, experiment=cpu_fast trains a width-0.25 net in about 15 min on 2 cores."
                    if device == "cpu" and total > 3600 else "")
            log.info("About %s for this fit's training steps (%d epochs of %d steps, %.3g s a step on this %s), "
                     "validation aside.%s", duration(total), trainer.max_epochs, trainer.num_training_batches,
                     seconds / steps, "CPU" if device == "cpu" else device.upper(), hint)


def duration(seconds: float) -> str:
    """A length of time as a person says it: 40 s, 25 min, 13 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 10 * 3600 else f"{seconds / 3600:.0f} h"


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar, redrawn every `refresh_rate` steps or every `refresh_s` seconds,
    whichever comes first: on a GPU the steps decide (a redraw reads the logged values back), on a
    CPU, where a step of the full net takes seconds, the clock does."""

    def __init__(self, refresh_rate: int = 20, refresh_s: float = 2.0) -> None:
        super().__init__(refresh_rate=refresh_rate)
        check("callbacks.progress_bar.refresh_s", refresh_s, float, low=0)
        self.refresh_s, self.drawn = refresh_s, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n, bar, now = batch_idx + 1, self.train_progress_bar, time.monotonic()
        if not self.is_enabled or not (n % self.refresh_rate == 0 or n == bar.total or now - self.drawn >= self.refresh_s):
            return
        self.drawn = now
        if not bar.disable:
            bar.n = n
            bar.refresh()
        bar.set_postfix(self.get_metrics(trainer, pl_module))


class WeightAveraging(EMAWeightAveraging):
    """Lightning's EMAWeightAveraging with the average on the training device: Lightning builds it
    in `setup`, before the module moves, so it would live in host memory and copy every weight off
    the GPU each step. Validation, the test, the analysis and the checkpoints' `state_dict` hold the
    average; the raw weights travel in the checkpoint for resume."""

    def __init__(self, decay: float = 0.999, **kwargs) -> None:
        super().__init__(decay=decay, **kwargs)
        self.decay = decay  # for the report: Lightning keeps it inside its averaging function only

    def setup(self, trainer, pl_module, stage: str) -> None:
        keep_average_on(self, trainer.strategy.root_device)
        super().setup(trainer, pl_module, stage)


class Lookahead(L.Callback):
    """airbench's lookahead: every `every_n_steps` steps an average of the weights (and BN statistics)
    moves toward them by 1 - d and the weights are set to it, with d = decay**every_n_steps *
    (step / total steps)**power, so it is 0 at the start (the weights move freely) and grows as the
    LR falls. The last step sets the weights to the average, before the last validation and
    checkpoint. The average travels in checkpoints, so a resume continues it."""

    def __init__(self, decay: float = 0.95, every_n_steps: int = 5, power: float = 3.0) -> None:
        check("callbacks.lookahead.decay", decay, float, low=0, below=1, fix="airbench uses 0.95")
        check("callbacks.lookahead.every_n_steps", every_n_steps, low=1)
        check("callbacks.lookahead.power", power, float, low=0)
        self.decay, self.every_n_steps, self.power = float(decay), every_n_steps, float(power)
        self.average: list[torch.Tensor] | None = None
        self.last_step = -1

    @staticmethod
    def tensors(net: torch.nn.Module) -> list[torch.Tensor]:
        """What is averaged: the weights and BN statistics (not the BN step count)."""
        return [t for t in net.state_dict().values() if t.is_floating_point()]

    def on_train_start(self, trainer, module) -> None:
        tensors = self.tensors(module.net)
        if self.average is None:
            self.average = [t.detach().clone() for t in tensors]
        else:  # restored from a checkpoint, on the host
            self.average = [a.to(t.device) for a, t in zip(self.average, tensors)]

    @torch.no_grad()
    def pull(self, tensors: list[torch.Tensor], d: float) -> None:
        """average += (1 - d) (weights - average); weights = average. Two multi-tensor kernels on a GPU."""
        torch._foreach_lerp_(self.average, tensors, 1 - d)
        torch._foreach_copy_(tensors, self.average)

    def after_step(self, tensors: list[torch.Tensor], step: int, total: int) -> None:
        """After optimizer step `step` (1-based) of `total`."""
        if step >= total:
            self.pull(tensors, 1.0)
        elif step % self.every_n_steps == 0:
            self.pull(tensors, self.decay ** self.every_n_steps * (step / total) ** self.power)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.last_step:  # not a batch that accumulated gradients without a step
            self.last_step = trainer.global_step
            self.after_step(self.tensors(module.net), trainer.global_step, trainer.estimated_stepping_batches)

    def state_dict(self) -> dict:
        return {"average": self.average}

    def load_state_dict(self, state_dict: dict) -> None:
        self.average = state_dict["average"]


class LastCheckpoint(ModelCheckpoint):
    """`last.ckpt`, what resume= and eval.py read: written at the end of the first training step
    after every `every_s` seconds of training (Lightning's `train_time_interval`; the batch position
    is saved, so a resume from mid-epoch is exact), and at the last epoch's end. A SIGKILL loses at
    most `every_s` seconds and a step; SIGINT and SIGTERM save where they stop (resume.StopOnSignal).
    Each save costs the loop little (the writes are in the background), but two a step-heavy epoch
    were a measurable share of a GPU fit (benchmarks/RESULTS.md, "Checkpoint writes")."""

    def __init__(self, dirpath: str, every_s: float = 60.0) -> None:
        check("callbacks.last_checkpoint.every_s", every_s, float, low=0, fix="seconds; 0: after every step")
        super().__init__(dirpath=dirpath, filename="last", monitor=None, save_top_k=1, enable_version_counter=False,
                         train_time_interval=timedelta(seconds=every_s))
        self.every_s = every_s

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 >= trainer.max_epochs:  # the fit's end: what eval.py and a resume read
            trainer.save_checkpoint(Path(self.dirpath) / f"last{self.FILE_EXTENSION}")


class AsyncCheckpointWrites(TorchCheckpointIO):
    """Checkpoints written by a background thread, so an epoch's end does not wait for them.

    The calling thread takes the copy, so a file holds the weights of the moment it was asked for;
    CUDA tensors go to pinned host memory without waiting, and the writer waits on a CUDA event,
    which lets go of the GIL (`torch.save` on the writer would hold it while each copy waits for
    the GPU). Writes, then removals, run one at a time in order, so ModelCheckpoint never deletes
    a file still queued (unlike Lightning's AsyncCheckpointIO, Lightning-AI/pytorch-lightning#14035).
    Loads and the end of every fit / test wait for the queue; a failed write raises on the next call,
    and nothing queued after it runs, so an older checkpoint it would have replaced is kept.
    """

    def __init__(self) -> None:
        super().__init__()
        self.executor: ThreadPoolExecutor | None = None
        self.error: BaseException | None = None
        self.failed = False

    def submit(self, fn, *args) -> None:
        def run() -> None:
            if self.failed:  # what was queued after a failed write (the removal of the file it replaces) waits
                return
            try:
                fn(*args)
            except BaseException as error:  # noqa: BLE001 - raised on the caller's thread, next call
                self.error, self.failed = error, True

        self.raise_error()
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writes")
        self.executor.submit(run)

    def raise_error(self) -> None:
        error, self.error = self.error, None
        if error is not None:
            raise error

    def wait(self) -> None:
        if self.executor is not None:
            self.executor.submit(lambda: None).result()
        self.raise_error()

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        devices = set()

        def to_host(tensor: torch.Tensor) -> torch.Tensor:
            tensor = tensor.detach()
            if tensor.is_cuda:
                devices.add(tensor.device)
                return tensor.to("cpu", non_blocking=True)  # pinned memory, in stream order
            return tensor.clone() if tensor.device.type == "cpu" else tensor.cpu()

        snapshot = apply_to_collection(checkpoint, torch.Tensor, to_host)
        state_dict = checkpoint.get("state_dict")
        if hasattr(state_dict, "_metadata"):  # module versions, which load_state_dict reads; the copy drops them
            snapshot["state_dict"]._metadata = state_dict._metadata
        copied = [torch.cuda.current_stream(device).record_event() for device in devices]
        self.submit(self.write, copied, snapshot, path, storage_options)

    def write(self, copied: list, snapshot: dict, path, storage_options) -> None:
        for event in copied:
            event.synchronize()  # the host copies have landed (waits without the GIL)
        self.write_file(snapshot, path, storage_options)

    def write_file(self, checkpoint: dict, path, storage_options=None) -> None:
        """`torch.save` straight into a file beside the target, which replaces it once complete
        (`files.written_whole`). Lightning's save pickles into a `BytesIO` and copies it out,
        holding the GIL through both (benchmarks/checkpoint_writes.py). Remote paths and storage
        options go through Lightning's."""
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with written_whole(path, "checkpoint") as file:
            stream = KeptErrors(file)
            try:
                torch.save(checkpoint, stream)
            except RuntimeError:
                if stream.error is not None:  # torch reports a failed write without its errno
                    raise stream.error from None
                raise

    def remove_checkpoint(self, path) -> None:
        self.submit(super().remove_checkpoint, path)

    def load_checkpoint(self, *args, **kwargs):
        self.wait()
        return super().load_checkpoint(*args, **kwargs)

    def teardown(self) -> None:
        executor, self.executor = self.executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        self.raise_error()


class KeptErrors:
    """A file's `write`, keeping the OSError that torch.save turns into a RuntimeError without it."""

    def __init__(self, file) -> None:
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.file.flush()
