"""Test accuracy and fit time of one recipe trained two ways, on the same data and seeds:

(a) project: `resnet_onecycle.tasks.train`, what `src/train.py` runs (Trainer.fit with the real
    DataModule, module and callbacks, then the test), pictures off;
(b) plain:   a hand-written PyTorch loop of the same recipe (throughput.py's loop: the same uint8
    tensors, batched augmentation, net, SGD + OneCycleLR, label smoothing, the BN settings),
    validating every epoch as the project does, with `torch.optim.swa_utils`' EMA where the recipe
    has `callbacks.ema`, the project's lookahead where it has `callbacks.lookahead`, and the
    recipe's test-time augmentation at the test.

The two clocks cover the same work: every training step and every epoch's validation.
- project: `fit_time_s` of metrics.json, the wall time of `Trainer.fit` less the data's one-off
  preparation (reading or decoding the cache and splitting it, reported as `data_prep_time_s`).
  It includes all the project's own costs: Lightning's set-up of the module and optimizer, the
  checkpoints, the logging and the epoch-end hooks.
- plain: from after the data is in memory and the net is built to the end of the last validation;
  it writes no checkpoint and logs nothing.
Neither clock holds the test. Prints one JSON object: each seed's test accuracy and fit time per
path, and their mean and standard deviation.

    python benchmarks/accuracy.py --seeds 0,1 experiment=cpu_fast data.source=cifar10-jpeg.tar.gz
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from resnet_onecycle.callbacks import Lookahead
from resnet_onecycle.data.augment import normalize
from resnet_onecycle.models import with_tta
from resnet_onecycle.tasks import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import CONFIGS, host_cpu, plain, report, sync  # noqa: E402


@torch.no_grad()
def accuracy(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg, device: torch.device) -> float:
    """Top-1 accuracy in eval mode, with the recipe's TTA, precision and memory format."""
    net = with_tta(net, cfg.model.tta)
    bf16 = str(cfg.trainer.precision).startswith("bf16")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False) if bf16 else nullcontext()
    memory_format = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    was_training, batch = net.training, cfg.data.eval_batch_size or cfg.data.batch_size
    net.eval()
    hits = torch.zeros((), device=device)
    with autocast:
        for start in range(0, len(labels), batch):
            x = normalize(images[start:start + batch].to(device)).contiguous(memory_format=memory_format)
            hits += (net(x).argmax(1) == labels[start:start + batch].to(device)).sum()
    net.train(was_training)
    return hits.item() / len(labels)


def device_of(cfg) -> torch.device:
    """Where the trainer config puts the steps (accelerator auto, gpu or cpu; one device)."""
    return torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu")


def plain_run(cfg, device: torch.device) -> dict:
    L.seed_everything(cfg.seed, workers=True)
    net = instantiate(cfg.model.net).to(device)
    ema_cfg = (cfg.get("callbacks") or {}).get("ema")
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(ema_cfg.decay), use_buffers=True) if ema_cfg else None
    evaluated = net if ema is None else ema.module
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    lookahead = instantiate(cfg.callbacks.lookahead) if (cfg.get("callbacks") or {}).get("lookahead") else None
    if lookahead is not None:
        lookahead.average = [t.detach().clone() for t in Lookahead.tensors(net)]
    total = cfg.trainer.max_epochs * math.ceil(len(datamodule.splits["train"][1]) / cfg.data.batch_size)

    def after_step(step: int) -> None:
        if ema is not None:
            ema.update_parameters(net)
        if lookahead is not None:
            lookahead.after_step(Lookahead.tensors(net), step + 1, total)

    val_accuracy = []
    sync(device)
    start = time.perf_counter()
    plain(cfg, cfg.trainer.max_epochs, device, net=net, after_step=after_step,
          after_epoch=lambda epoch: val_accuracy.append(accuracy(evaluated, *datamodule.splits["val"], cfg, device)))
    sync(device)
    fit_time = time.perf_counter() - start
    return {"test_acc": accuracy(evaluated, *datamodule.splits["test"], cfg, device), "fit_time_s": round(fit_time, 2),
            "test_images": len(datamodule.splits["test"][1]),
            "val_acc_per_epoch": [round(a, 4) for a in val_accuracy]}


def project_run(cfg) -> dict:
    summary = train(cfg)
    return {"test_acc": summary["test/acc"], "fit_time_s": summary["fit_time_s"]}


def spread(runs: list[dict]) -> dict:
    accs, times = [r["test_acc"] for r in runs], [r["fit_time_s"] for r in runs]
    return {"test_acc_mean": round(statistics.mean(accs), 4),
            "test_acc_std": round(statistics.stdev(accs), 4) if len(accs) > 1 else None,
            "fit_time_s_mean": round(statistics.mean(times), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default=[0, 1],
                        help="comma-separated, e.g. 0,1,2")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for src/train.py")
    args = parser.parse_args()

    runs: dict[str, list[dict]] = {"project": [], "plain": []}
    with tempfile.TemporaryDirectory() as out, initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        for seed in args.seeds:
            for path in ("project", "plain") if seed % 2 == 0 else ("plain", "project"):  # drifts weigh alike
                cfg = compose("train", overrides=[f"paths.root_dir={Path.cwd()}", f"paths.output_dir={out}/{seed}-{path}",
                                                  "analysis.enabled=false", *args.overrides, f"seed={seed}"])
                if path == "project":
                    run = project_run(cfg)
                else:
                    run = plain_run(cfg, device_of(cfg))
                runs[path].append({"seed": seed, **run})
    device = device_of(cfg)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "host": host_cpu(), "python": platform.python_version(), "torch": torch.__version__, "lightning": L.__version__,
        "date": time.strftime("%Y-%m-%d"), "overrides": args.overrides, "epochs": cfg.trainer.max_epochs,
        "width": cfg.model.net.width, "precision": str(cfg.trainer.precision),
        "test_images": runs["plain"][0]["test_images"],
        **{path: {"runs": r, **spread(r)} for path, r in runs.items()},
    }
    result["accuracy_project_minus_plain"] = round(result["project"]["test_acc_mean"] - result["plain"]["test_acc_mean"], 4)
    result["speed_project_over_plain"] = round(result["plain"]["fit_time_s_mean"] / result["project"]["fit_time_s_mean"], 3)
    report(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
