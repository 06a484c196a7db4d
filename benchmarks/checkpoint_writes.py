"""How much checkpoints written in the background hold back the training loop on the main thread.

The loop: epochs of `--steps` steps of `--ops` small tensor ops each; every op lets go of the GIL
while it runs, as a training step's ops do, and needs it back to go on. The writes: at each
epoch's start, two checkpoints of the original's network (`--width`, with its SGD momentum), as
ModelCheckpoint's best and last files are written in an epoch whose accuracy improves, queued
on `AsyncCheckpointWrites`' writer thread. Three ways, every other round in reverse order:

  none       no writes (the floor);
  lightning  the writer runs Lightning's save (`TorchCheckpointIO.save_checkpoint`: pickles into
             a BytesIO, then copies it out, all under the GIL);
  project    the writer runs `AsyncCheckpointWrites.write_file` (pickles straight into the file).

Prints, as JSON, each way's median epoch and the milliseconds its writes add to an epoch. With
`--device cuda` the net and the loop's tensors are on the GPU, so the checkpoint is copied to
pinned host memory first, as in training.

    python benchmarks/checkpoint_writes.py
    python benchmarks/checkpoint_writes.py --device cuda --json writes.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from throughput import report

from resnet_onecycle.callbacks import AsyncCheckpointWrites
from resnet_onecycle.models import MixedResNet


class LightningsSave(AsyncCheckpointWrites):
    """The same writer thread and host copies, writing with Lightning's save."""

    def write_file(self, checkpoint: dict, path, storage_options=None) -> None:
        TorchCheckpointIO.save_checkpoint(self, checkpoint, path, storage_options)


def checkpoint(width: float, device: str) -> dict:
    """What Lightning puts in a checkpoint, with the original's net and SGD's momentum buffers."""
    net = MixedResNet(width).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9, nesterov=True, weight_decay=5e-4)
    net(torch.randn(2, 3, 32, 32, device=device)).sum().backward()
    optimizer.step()
    return {"epoch": 1, "global_step": 98, "pytorch-lightning_version": L.__version__,
            "state_dict": net.state_dict(), "optimizer_states": [optimizer.state_dict()],
            "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 2, "completed": 1}}}},
            "callbacks": {}, "lr_schedulers": [{"last_epoch": 98}], "hyper_parameters": {"channels_last": True}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, default=1.0, help="the net's width (1.0: the original's, ~53 MB a checkpoint)")
    parser.add_argument("--device", default="cpu", help="where the net and the loop's tensors live: cpu or cuda")
    parser.add_argument("--steps", type=int, default=98, help="steps an epoch (the original's: 98)")
    parser.add_argument("--ops", type=int, default=600, help="tensor ops a step (a seed step runs about 600)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs a way and round, each with two writes")
    parser.add_argument("--rounds", type=int, default=2, help="the ways this many times over, every other round reversed")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()

    torch.set_num_threads(1)  # the loop's ops are tiny: one thread, and the writer's CPU time stays apart
    state = checkpoint(args.width, args.device)
    x = torch.ones(4, device=args.device)

    def epoch() -> float:
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            y = x
            for _ in range(args.ops):
                y = y + 1
        if x.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    ways = {"none": None, "lightning": LightningsSave, "project": AsyncCheckpointWrites}
    times: dict[str, list[float]] = {way: [] for way in ways}
    waits: dict[str, list[float]] = {way: [] for way in ways}
    epoch()  # warm-up
    with tempfile.TemporaryDirectory() as out:
        for i in range(args.rounds):
            for way in list(ways) if i % 2 == 0 else list(ways)[::-1]:
                io = ways[way]() if ways[way] else None
                for _ in range(args.epochs):
                    if io:
                        io.save_checkpoint(state, Path(out, "best.ckpt"))
                        io.save_checkpoint(state, Path(out, "last.ckpt"))
                    times[way].append(epoch())
                    start = time.perf_counter()
                    if io:
                        io.wait()  # every write lands within its epoch: the time past its end is reported
                    waits[way].append(time.perf_counter() - start)
                if io:
                    io.teardown()
        size = Path(out, "last.ckpt").stat().st_size

    median = {way: statistics.median(t) for way, t in times.items()}
    result = {
        "device": torch.cuda.get_device_name() if x.is_cuda else "cpu", "torch": torch.__version__,
        "lightning": L.__version__, "date": time.strftime("%Y-%m-%d"), "width": args.width,
        "checkpoint_mb": round(size / 1e6, 1), "steps": args.steps, "ops_per_step": args.ops,
        "epoch_s_median": {way: round(t, 4) for way, t in median.items()},
        "writes_add_ms_per_epoch": {way: round((median[way] - median["none"]) * 1e3, 1) for way in ("lightning", "project")},
        "wait_after_epoch_ms_median": {way: round(statistics.median(w) * 1e3, 1) for way, w in waits.items()},
        "epoch_times_s": {way: [round(t, 4) for t in ts] for way, ts in times.items()},
    }
    report(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
