"""Training throughput: the project's full path against a plain PyTorch loop, in one process.

(a) project: `Trainer.fit` with the real CIFAR10DataModule and MixedResNetModule, composed from
    the project's configs with the same overrides a user would give `src/train.py`, with its
    logger and LR monitor on (validation and checkpoints off: they are not training);
(b) plain:   a hand-written loop over the same uint8 tensors, the same batched augmentation,
    model, SGD + OneCycleLR, batch size, precision and memory format;
(c) with `--bare`, also Lightning's loop alone: the same `Trainer.fit` with no callbacks, logger,
    progress bar or training metrics, which splits the project's cost between Lightning's own
    per-step work and what the project adds to it.

With `--null-net` the net is one Linear layer on the flattened image: with a small batch a step's
math is next to nothing, so the times are the host's own work per step (on a GPU, its kernel
launches included), which is what an eager GPU step waits on where the host bounds it.

Each runs `--epochs` epochs; the first is start-up (cudnn autotuning, compilation, caches) and
is reported apart; steady state is the median of the others. `--rounds N` runs the paths N times
over, every other round in reverse order (project, plain; plain, project; ...), and pools the
steady epochs, so that a shared machine's slow drifts weigh on all paths alike. Prints one JSON
object.

    python benchmarks/throughput.py experiment=cpu_quick data.source=/path/to/cifar10-jpeg.tar.gz
    python benchmarks/throughput.py --epochs 6 experiment=original trainer=gpu data.source=...
    python benchmarks/throughput.py --null-net --bare --rounds 3 --epochs 4 experiment=original trainer=cpu \
        data.batch_size=2 data.subset=2048 model.channels_last=false data.source=...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

from resnet_onecycle import trackers
from resnet_onecycle.data.augment import augment
from resnet_onecycle.data.cifar10 import Batches
from resnet_onecycle.framework import compile_counters
from resnet_onecycle.module import MixedResNetModule, compiled, freeze_bn_scales, parameter_groups
from resnet_onecycle.tasks import instantiate_group

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# --null-net: one Linear layer on the flattened 32x32x3 image
NULL_NET = {"_target_": "torch.nn.Sequential", "_args_": [
    {"_target_": "torch.nn.Flatten"}, {"_target_": "torch.nn.Linear", "in_features": 3072, "out_features": 10}]}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochTimer(L.Callback):
    """Wall time of each training epoch, from its first batch fetch to its last optimizer step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        sync(module.device)
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        sync(module.device)
        self.times.append(time.perf_counter() - self.start)


class BareModule(MixedResNetModule):
    """The project's module less its training metrics: forward and cross-entropy only."""

    def step(self, batch, stage: str) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(self.logits(images), labels)

    def log_epoch(self, stage: str) -> None:
        pass


def project(cfg, epochs: int, extra_callbacks=(), bare: bool = False) -> tuple[list[float], int, torch.device]:
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.model, _target_=f"{BareModule.__module__}.BareModule") if bare else instantiate(cfg.model)
    timer = EpochTimer()
    callbacks = [] if bare else [
        c for c in instantiate_group(cfg.callbacks) if not isinstance(c, L.pytorch.callbacks.ModelCheckpoint)]
    trainer = instantiate(
        cfg.trainer, max_epochs=epochs, callbacks=[*extra_callbacks, *callbacks, timer],
        logger=False if bare else trackers.build(cfg, Path(cfg.paths.output_dir)), enable_progress_bar=not bare,
        limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=False,
    )
    trainer.fit(module, datamodule=datamodule)
    # (after fit Lightning moves the module back to the CPU: ask the strategy where it ran)
    return timer.times, len(datamodule.splits["train"][1]), trainer.strategy.root_device


def plain(cfg, epochs: int, device: torch.device, after_step=lambda step: None,
          phase=lambda name: nullcontext(), net: torch.nn.Module | None = None,
          after_epoch=lambda epoch: None) -> list[float]:
    """The same work by hand: nothing but tensors, the net, SGD and OneCycleLR. `phase(name)` wraps
    each part of a step (host_syncs.py names them for the profiler); `net` is trained in place
    when given (accuracy.py tests it afterwards); `after_epoch` runs outside the epoch's time."""
    torch.backends.cudnn.benchmark = bool(cfg.trainer.get("benchmark"))
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    images, labels = (t.to(device) for t in datamodule.splits["train"])
    batches = Batches(images, labels, cfg.data.batch_size, shuffle=True, seed=cfg.seed,
                      alternate_flip=cfg.data.flip == "alternate")
    net = (net if net is not None else instantiate(cfg.model.net)).to(device)
    if cfg.model.get("freeze_bn_weights"):
        freeze_bn_scales(net)
    memory_format = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    if cfg.model.compile:  # from a clean compiler state, as the project's module compiles (its setup)
        torch.compiler.reset()
    forward = compiled(net, cfg.model.compile, device.type) if cfg.model.compile else net
    groups = parameter_groups(net, cfg.model.get("bn_bias_lr_scale", 1), cfg.model.optimizer.weight_decay)
    optimizer = instantiate(cfg.model.optimizer)(params=groups)
    scheduler = instantiate(cfg.model.scheduler)(optimizer, total_steps=epochs * len(batches), steps_per_epoch=len(batches))
    precision = str(cfg.trainer.precision)
    # As Lightning's bf16-mixed does it (no cast cache): the same math, and a compiled net's guards
    # on the autocast state pass in both paths
    bf16 = precision.startswith("bf16")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False) if bf16 else nullcontext()
    d, smoothing = cfg.data, cfg.model.get("label_smoothing", 0.0)
    times, step = [], 0
    for epoch in range(epochs):
        sync(device)
        start = time.perf_counter()
        batches.set_epoch(epoch)
        for x, y, *flipped in batches:
            with phase("augment"):
                x = augment(x, d.crop_padding, d.flip is True, d.cutout_size, d.padding_mode, *flipped)
            with phase("forward"), autocast:
                loss = F.cross_entropy(forward(x.contiguous(memory_format=memory_format)), y, label_smoothing=smoothing)
            with phase("backward"):
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            with phase("optimizer"):
                optimizer.step()
                scheduler.step()
            after_step(step)
            step += 1
        sync(device)
        times.append(time.perf_counter() - start)
        after_epoch(epoch)
    return times


def host_cpu() -> str:
    """The host's CPU model and core count: on a GPU, eager steps can be bound by it."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores"


def report(result: dict, path: Path | None) -> None:
    """Print the result as JSON, and write it to `path` too if given."""
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        path.write_text(text + "\n")


def steady(times: list[float]) -> float:
    return statistics.median(times[1:]) if len(times) > 1 else times[0]


def summarize(rounds: list[list[float]], images: int, steps: int) -> dict:
    """Steady state: the median of every round's epochs but its first; `steps` a training epoch."""
    median = statistics.median(t for times in rounds for t in (times[1:] or times))
    return {"first_epoch_s": round(rounds[0][0], 3), "steady_epoch_s": round(median, 3),
            "images_per_s": round(images / median, 1), "step_ms": round(median / steps * 1e3, 4),
            "epoch_times_s": [[round(t, 3) for t in r] for r in rounds]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per path; the first counts as start-up")
    parser.add_argument("--rounds", type=int, default=1,
                        help="the paths this many times over, every other round in reverse order: "
                        "slow drifts of a shared machine cancel out")
    parser.add_argument("--bare", action="store_true",
                        help="also time Lightning's loop alone (no callbacks, logger, progress bar or training metrics)")
    parser.add_argument("--null-net", action="store_true",
                        help="one Linear layer for a net: the times are the host's own work per step")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for src/train.py")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as out, initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        root = Path.cwd()
        # Throughput does not depend on the LR; the peak only has to fall inside the short run.
        cfg = compose("train", overrides=[f"paths.root_dir={root}", f"paths.output_dir={out}", *args.overrides,
                                          f"model.scheduler.peak_epoch={args.epochs / 2}"])
        if args.null_net:
            with open_dict(cfg):
                cfg.model.net = NULL_NET
        compiled = {"project": Counter(), "plain": Counter(), "lightning_bare": Counter()}  # what torch.compile did

        def timed(path: str, run):
            L.seed_everything(cfg.seed, workers=True)
            before = compile_counters()
            result = run()
            compiled[path].update(compile_counters(since=before))
            return result

        paths = ["project", *(["lightning_bare"] if args.bare else []), "plain"]
        rounds: dict[str, list[list[float]]] = {path: [] for path in paths}
        orders = []
        for i in range(args.rounds):
            # every other round in reverse order: a drift of the machine's speed within a round
            # then weighs on each path as much as on the others (the first round sees the device)
            order = paths if i % 2 == 0 else paths[::-1]
            orders.append(order)
            for path in order:
                if path == "plain":
                    rounds[path].append(timed(path, lambda: plain(cfg, args.epochs, device)))
                else:
                    times, images, device = timed(path, lambda: project(cfg, args.epochs, bare=path == "lightning_bare"))
                    rounds[path].append(times)

    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "lightning": L.__version__, "date": time.strftime("%Y-%m-%d"),
        "overrides": args.overrides, "train_images": images, "batch_size": cfg.data.batch_size,
        "width": "null net" if args.null_net else cfg.model.net.width,
        "parameters": sum(p.numel() for p in instantiate(cfg.model.net).parameters()), "precision": str(cfg.trainer.precision),
        "compile": cfg.model.compile, "host": host_cpu(), "python": platform.python_version(),
    }
    steps = math.ceil(images / cfg.data.batch_size)
    result.update({path: summarize(times, images, steps) for path, times in rounds.items()})
    result["ratio_project_over_plain"] = round(result["project"]["images_per_s"] / result["plain"]["images_per_s"], 3)
    result["ratio_per_round"] = [round(steady(b) / steady(a), 3) for a, b in zip(rounds["project"], rounds["plain"])]
    result["order_per_round"] = orders
    # where the host bounds the step, this is the host work a step that the path adds to the plain loop's
    result["step_ms_over_plain"] = {path: round(result[path]["step_ms"] - result["plain"]["step_ms"], 4)
                                    for path in rounds if path != "plain"}
    if args.bare:
        result["ratio_bare_over_plain"] = round(result["lightning_bare"]["images_per_s"] / result["plain"]["images_per_s"], 3)
    if cfg.model.compile:
        for path, counts in compiled.items():
            if path in result:
                result[path]["compile"] = dict(counts)
    report(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
