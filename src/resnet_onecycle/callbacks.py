"""Training callbacks that are not resume (see resume.py): the LR log, weight averaging, and
the checkpoint writer."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning_utilities.core.apply_func import apply_to_collection


class LearningRates(L.Callback):
    """The LR and momentum of every param group, every `trainer.log_every_n_steps` steps, under
    Lightning's LearningRateMonitor names (`lr-SGD`, `lr-SGD-momentum`; `.../pgN` with several groups).

    LearningRateMonitor (Lightning 2.6) also puts each value into `trainer.callback_metrics` as a
    tensor on the device (Lightning-AI/pytorch-lightning#17626): on a GPU, a copy from host memory
    that waits for every queued kernel. On an H200 that was 0.2 stream syncs per training step at
    the 10-step interval, the only ones in the step. This reads the optimizer's floats only.
    """

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if (trainer.global_step + 1) % trainer.log_every_n_steps or not trainer.loggers:
            return
        stats = {}
        for optimizer in trainer.optimizers:
            name = f"lr-{type(optimizer).__name__}"
            groups = optimizer.param_groups
            for i, group in enumerate(groups):
                key = name if len(groups) == 1 else f"{name}/pg{i + 1}"
                stats[key] = group["lr"]
                momentum = group["betas"][0] if "betas" in group else group.get("momentum")
                if momentum is not None:
                    stats[f"{key}-momentum"] = momentum
        for logger in trainer.loggers:
            logger.log_metrics(stats, step=trainer.global_step)


class WeightAveraging(EMAWeightAveraging):
    """Lightning's EMAWeightAveraging, with the average kept where the training steps run.

    Lightning builds the average in `setup`, before the strategy moves the module to its device,
    so by default it would live in host memory and copy every weight off the GPU after each step.
    Validation, the final test, the analysis and the checkpoints' `state_dict` (what eval.py reads)
    then hold the averaged weights; the raw ones travel in the checkpoint for resume.
    """

    def __init__(self, decay: float = 0.999, **kwargs) -> None:
        super().__init__(decay=decay, **kwargs)
        self.decay = decay  # for the report: Lightning keeps it inside its averaging function only

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self._device is None:  # Lightning's constructor argument, read in its setup
            self._device = trainer.strategy.root_device
        super().setup(trainer, pl_module, stage)


class AsyncCheckpointWrites(TorchCheckpointIO):
    """Checkpoints written by a background thread, so that an epoch's end does not wait for
    serialization and the disk (two ~53 MB files in an epoch whose val/acc improves).

    The calling thread takes the copy: the file holds the weights of the moment it was asked for,
    whatever training does next. CUDA tensors are copied into pinned host memory without waiting,
    queued on the stream behind the step that made them; the writer waits for that copy on a CUDA
    event, which lets go of the GIL. (Left to `torch.save` on the writer thread, each of the ~100
    tensors would be copied by a storage copy that holds the GIL until the GPU reaches it: on an
    H200 the training steps of an epoch took 0.13-0.39 s longer with those writes than without
    checkpoints.)

    Writes, then removals, run one at a time in the order they were asked for, so
    ModelCheckpoint's top-k clean-up never deletes a file whose write is still queued
    (Lightning's own AsyncCheckpointIO removes at once: Lightning-AI/pytorch-lightning#14035).
    A load, and the end of every fit / test, wait for the queued writes; an error in a write is
    raised on the next call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.executor: ThreadPoolExecutor | None = None
        self.error: BaseException | None = None

    def submit(self, fn, *args) -> None:
        def run() -> None:
            try:
                fn(*args)
            except BaseException as error:  # noqa: BLE001 - raised on the caller's thread, next call
                self.error = error

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
        """`torch.save` straight into the file. Lightning's own save pickles into a `BytesIO` and
        copies that out again: two copies of the whole file made while holding the GIL, during
        which the training loop cannot run Python. Here the tensors' bytes go out in system calls
        that let go of it: on a 2-core CPU, two 53 MB checkpoints an epoch held a loop of small
        tensor ops back 13-14 ms against 41-43 ms (benchmarks/checkpoint_writes.py). The file is written
        next to its target and replaces it once complete, so an interrupted or failed write
        leaves the checkpoint before it whole, as Lightning's fsspec transaction does. A remote
        path (`s3://...`) or storage options go through Lightning's save."""
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        try:
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)

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
