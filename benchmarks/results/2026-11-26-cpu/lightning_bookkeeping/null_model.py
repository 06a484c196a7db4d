"""Host time a step that Lightning (and the project) add to the plain loop, made visible with a
null model: one Linear layer on the flattened image, batch 2, 1,024 steps an epoch, on the CPU.
Runs throughput.py's three paths (bare Trainer.fit, the full project path, the plain loop) 3 times
over, 4 epochs each, and prints the median of the steady epochs in µs a step. The code measured is
the checkout at $ROOT (its src/ first on PYTHONPATH):

    ROOT=<checkout> PYTHONPATH=<checkout>/src python null_model.py /path/to/cifar10-jpeg.tar.gz

null_model.jsonl: the code before (acfe3d6) and now, 3 runs each, alternating.
"""
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.environ["ROOT"] + "/benchmarks")
import throughput as T  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

NET = {"_target_": "torch.nn.Sequential", "_args_": [{"_target_": "torch.nn.Flatten"},
                                                      {"_target_": "torch.nn.Linear", "in_features": 3072, "out_features": 10}]}
STEPS = 1024
times = {"bare": [], "full": [], "plain": []}
with tempfile.TemporaryDirectory() as out, initialize_config_dir(config_dir=str(T.CONFIGS), version_base="1.3"):
    cfg = compose("train", overrides=[f"paths.root_dir={out}", f"paths.output_dir={out}", "experiment=seed", "trainer=cpu",
                                      "data.batch_size=2", f"data.subset={2 * STEPS}", f"data.source={sys.argv[1]}",
                                      "model.scheduler.peak_epoch=1", "model.channels_last=false"])
    OmegaConf.set_struct(cfg, False)
    cfg.model.net = OmegaConf.create(NET)
    for _ in range(3):
        times["bare"] += [t / STEPS * 1e6 for t in T.project(cfg, 4, bare=True)[0][1:]]
        times["full"] += [t / STEPS * 1e6 for t in T.project(cfg, 4)[0][1:]]
        times["plain"] += [t / STEPS * 1e6 for t in T.plain(cfg, 4, torch.device("cpu"))[1:]]
us = {path: round(statistics.median(t), 1) for path, t in times.items()}
print(json.dumps({"bare_us_per_step": us["bare"], "plain_us_per_step": us["plain"],
                  "lightning_us": round(us["bare"] - us["plain"], 1), "full_us_per_step": us["full"],
                  **{f"{p}_all": [round(x) for x in t] for p, t in times.items()}}))
