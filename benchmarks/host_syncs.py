"""Host syncs and kernel launches per training step, counted by torch.profiler on a GPU: the
project's full path (`Trainer.fit`, as in throughput.py) against the plain loop; with each
step's wall time and the GPU's busy time within it.

A host sync (`cudaStreamSynchronize`, `cudaDeviceSynchronize`, `cudaEventSynchronize`: what
`.item()`, `float(t)` or a copy to the host wait on) makes the host wait until the GPU's queue
is empty, so the GPU then idles while the host prepares the next kernels; each kernel launch
costs host time. Steps `--start` to `--stop` of the first epoch are recorded whole, batch fetch
to optimizer step. The plain loop's steps are also split by part (augmentation, forward,
backward, optimizer): the host time each part takes under the profiler, its kernel launches and
its aten ops, which says where the shared work of a step goes. Prints one JSON object. On a CPU
only `aten::_local_scalar_dense` is counted among the syncs.

    python benchmarks/host_syncs.py experiment=original trainer=gpu data.source=...
"""

from __future__ import annotations

import argparse
import bisect
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from throughput import CONFIGS, plain, project, report
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from resnet_onecycle.framework import compile_counters

SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "aten::_local_scalar_dense")
REGION = "Torch-Compiled Region: "  # the profiler's name for a call of a compiled graph
PHASE = "step part: "  # the plain loop's parts, named by `phase` below
LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch")


def synced_time() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


class Window:
    """Profiles from the end of step `start - 1` to the end of step `stop - 1`."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop, self.profiler, self.counts = start, stop, None, {}

    def after_step(self, step: int) -> None:
        if step == self.start - 1:
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            self.profiler = profile(activities=activities)
            self.profiler.__enter__()
            self.started = synced_time()
        elif step == self.stop - 1 and self.profiler is not None:
            wall_s = synced_time() - self.started
            profiler, self.profiler = self.profiler, None
            profiler.__exit__(None, None, None)
            steps = self.stop - self.start
            totals = {e.key: e.count for e in profiler.key_averages()}
            # GPU busy time: the kernels' and copies' durations (one stream: they do not overlap)
            gpu_us = sum(e.time_range.elapsed_us() for e in profiler.events() if e.device_type == DeviceType.CUDA)
            self.counts = {
                "syncs_per_step": {name: totals.get(name, 0) / steps for name in SYNCS},
                "kernel_launches_per_step": sum(totals.get(name, 0) for name in LAUNCHES) / steps,
                "cuda_graph_launches_per_step": totals.get("cudaGraphLaunch", 0) / steps,  # of those, graph replays
                # which of torch.compile's graphs ran ("frame/graph": 0/0 the first compiled): none
                # with model.compile on means the net ran uncompiled
                "compiled_graph_calls_per_step": {key.removeprefix(REGION): n / steps
                                                  for key, n in totals.items() if key.startswith(REGION)},
                "aten_ops_per_step": sum(n for key, n in totals.items() if key.startswith("aten::")) / steps,
                # wall time under the profiler (which slows the host): GPU busy near wall time means
                # the GPU bounds the step; far below it, the host does
                "wall_ms_per_step": round(1000 * wall_s / steps, 3),
                "gpu_busy_ms_per_step": round(gpu_us / 1000 / steps, 3),
            }
            if parts := by_part(profiler.events(), steps):
                self.counts["per_step_by_part"] = parts

    def close(self) -> None:
        """Stops a profiler whose window the epoch ended inside (left running, it crashes the interpreter's exit)."""
        if self.profiler is not None:
            self.profiler.__exit__(None, None, None)
            self.profiler = None


def by_part(events, steps: int) -> dict:
    """Host time, kernel launches and aten ops of each named part of a step, per step."""
    parts = sorted((e.time_range.start, e.time_range.end, e.name.removeprefix(PHASE))
                   for e in events if e.name.startswith(PHASE))
    result = {name: {"host_ms": 0.0, "kernel_launches": 0, "aten_ops": 0} for _, _, name in parts}
    for start, end, name in parts:
        result[name]["host_ms"] += (end - start) / 1000
    starts = [start for start, _, _ in parts]
    for e in events:
        if e.device_type != DeviceType.CPU or not (e.name in LAUNCHES or e.name.startswith("aten::")):
            continue
        i = bisect.bisect_right(starts, e.time_range.start) - 1
        if i >= 0 and e.time_range.start < parts[i][1]:
            result[parts[i][2]]["kernel_launches" if e.name in LAUNCHES else "aten_ops"] += 1
    return {name: {key: round(value / steps, 3) for key, value in counts.items()} for name, counts in result.items()}


class StepWindow(L.Callback):
    def __init__(self, window: Window) -> None:
        self.window = window

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.window.after_step(trainer.global_step - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", type=int, default=10, help="first step recorded (after cuDNN autotuning)")
    parser.add_argument("--stop", type=int, default=30, help="first step not recorded")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for src/train.py")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as out, initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.root_dir={Path.cwd()}", f"paths.output_dir={out}", *args.overrides,
                                          "model.scheduler.peak_epoch=0.5"])
        project_window, plain_window = Window(args.start, args.stop), Window(args.start, args.stop)
        L.seed_everything(cfg.seed, workers=True)
        before = compile_counters()
        _, _, device = project(cfg, 1, extra_callbacks=[StepWindow(project_window)])
        L.seed_everything(cfg.seed, workers=True)
        plain(cfg, 1, device, after_step=plain_window.after_step, phase=lambda name: record_function(PHASE + name))
        compiled = compile_counters(since=before)
        project_window.close()
        plain_window.close()

    if not project_window.counts or not plain_window.counts:
        sys.exit(f"an epoch has fewer than --stop={args.stop} steps: lower --start/--stop or raise data.subset")
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "lightning": L.__version__, "date": time.strftime("%Y-%m-%d"),
        "overrides": args.overrides, "steps": [args.start, args.stop],
        "project": project_window.counts, "plain": plain_window.counts,
    }
    if cfg.model.compile:  # what torch.compile did, both paths together: the plain loop reuses the project's graphs
        result["compile"] = compiled
    report(result, args.json)


if __name__ == "__main__":
    main()
