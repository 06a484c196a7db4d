"""Augmentation cost per batch, the implementation before (commit 23c3865: normalize, pad, then
crop, flip and cutout one after another) against the current one, in one process, alternating.

    git show 23c3865:src/resnet_onecycle/data/augment.py > /tmp/augment_before.py
    python benchmarks/results/2026-11-26-cpu/augment/compare.py /tmp/augment_before.py
"""

import importlib.util
import json
import statistics
import sys
import time
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from resnet_onecycle.data import augment as current

spec = importlib.util.spec_from_file_location("before", sys.argv[1])
before = importlib.util.module_from_spec(spec)
spec.loader.exec_module(before)
VIEWS = {"view", "expand", "permute", "unsqueeze", "slice", "select", "unbind", "squeeze", "alias", "detach", "t"}
# what a training step does with a uint8 batch before the net (which wants channels_last)
paths = {
    "before": lambda x: before.augment(before.normalize(x), 4, True, 8, "reflect").contiguous(memory_format=torch.channels_last),
    "current": lambda x: current.augment(x, 4, True, 8, "reflect").contiguous(memory_format=torch.channels_last),
}


class Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


result = {"device": f"cpu ({torch.get_num_threads()} threads)", "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
for name, f in paths.items():
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    f(x)
    with Ops() as ops:
        f(x)
    views = sum(n for op, n in ops.counts.items() if op in VIEWS)
    result[name] = {"aten_ops_per_batch": sum(ops.counts.values()), "of_which_views": views, "ops": dict(ops.counts)}
for n, reps in ((2, 2000), (512, 100)):
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    times = {name: [] for name in paths}
    for _ in range(3):
        for name, f in paths.items():
            for _ in range(20):
                f(x)
            start = time.perf_counter()
            for _ in range(reps):
                f(x)
            times[name].append((time.perf_counter() - start) / reps * 1e6)
    for name in paths:
        result[name][f"us_per_batch_of_{n}"] = {"median": round(statistics.median(times[name]), 1),
                                               "rounds": [round(t, 1) for t in times[name]]}
print(json.dumps(result, indent=2))
