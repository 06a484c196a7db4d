"""Does the LR range test's suggestion land where a real max-LR sweep peaks?

For each recipe: one sweep dir per seed (`python src/train.py -m ... model.scheduler.max_lr=a,b,c`, held-out
validation, `data.val_size`) and the range test's `lr_find.json` on the same settings
(`python src/find_lr.py ...`). The suggestion is recomputed from the stored curve with the
project's own rule (`resnet_onecycle.lr_find.suggest`), so the check follows the rule as it is.
It reports the sweeps' final val/acc per max LR (the mean over the seeds), the band of max LRs within `--band` points of
the best (the geometric midpoints between swept values bound it), the suggestion and whether it
lies inside; and draws accuracy against max LR with the suggestion marked.

    python benchmarks/lr_sweep.py --plot docs/lr_sweep.png \\
        seed=logs/train/multiruns/<time>,logs/train/multiruns/<time>:logs/find_lr/runs/<time>/lr_find.json \\
        fast=logs/train/multiruns/<time>,logs/train/multiruns/<time>:logs/find_lr/runs/<time>/lr_find.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from resnet_onecycle.lr_find import suggest
from resnet_onecycle.sweep_summary import parse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import report  # noqa: E402


def sweep_points(sweep_dirs: list[Path]) -> list[tuple[float, float, int]]:
    """(max_lr, final val/acc averaged over the sweeps, how many) for every max LR, in order."""
    import yaml

    by_lr: dict[float, list[float]] = {}
    for sweep_dir in sweep_dirs:
        for job in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()):
            metrics = json.loads((job / "metrics.json").read_text()) if (job / "metrics.json").exists() else {}
            overrides = dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
            if metrics.get("status") == "completed" and "val/acc" in metrics:
                by_lr.setdefault(float(parse(overrides["model.scheduler.max_lr"])), []).append(metrics["val/acc"])
    return [(lr, sum(accs) / len(accs), len(accs)) for lr, accs in sorted(by_lr.items())]


def band(points: list[tuple[float, float]], points_below: float) -> tuple[float, float]:
    """The max LRs whose accuracy is within `points_below` (in points) of the best, widened to the
    geometric midpoints to the neighbouring swept values outside it."""
    best = max(acc for _, acc, _ in points)
    inside = [i for i, (_, acc, _) in enumerate(points) if acc >= best - points_below / 100]
    lo, hi = min(inside), max(inside)
    low = math.sqrt(points[lo - 1][0] * points[lo][0]) if lo > 0 else points[lo][0]
    high = math.sqrt(points[hi][0] * points[hi + 1][0]) if hi + 1 < len(points) else points[hi][0]
    return low, high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="+", help="name=SWEEP_DIR[,SWEEP_DIR...]:LR_FIND_JSON (sweeps of other seeds averaged)")
    parser.add_argument("--band", type=float, default=0.5, help="points of accuracy below the best that count as inside")
    parser.add_argument("--plot", type=Path, help="write accuracy against max LR here")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()

    result = {}
    for spec in args.recipes:
        name, paths = spec.split("=", 1)
        sweep_dir, curve_file = paths.split(":", 1)
        points = sweep_points([Path(d) for d in sweep_dir.split(",")])
        curve = json.loads(Path(curve_file).read_text())
        suggestion, method = suggest(curve["lr"], curve["loss"])
        low, high = band(points, args.band)
        result[name] = {"val_acc_by_max_lr": {f"{lr:g}": round(acc, 4) for lr, acc, _ in points},
                        "runs_per_max_lr": {f"{lr:g}": n for lr, _, n in points},
                        "band": [round(low, 4), round(high, 4)], "suggestion": suggestion, "method": method,
                        "inside": suggestion is not None and low <= suggestion <= high,
                        "sweep": sweep_dir, "lr_find": curve_file}
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
        for i, (name, r) in enumerate(result.items()):
            color = f"C{i}"
            lrs = [float(k) for k in r["val_acc_by_max_lr"]]
            ax.plot(lrs, [100 * a for a in r["val_acc_by_max_lr"].values()], "-o", color=color, label=f"{name}: sweep")
            ax.axvspan(*r["band"], color=color, alpha=0.12)
            if r["suggestion"]:
                ax.axvline(r["suggestion"], color=color, linestyle="--",
                           label=f"{name}: range test suggests {r['suggestion']:.3g}")
        ax.set_xscale("log")
        ax.set_xlabel("model.scheduler.max_lr (log scale)")
        ax.set_ylabel("final held-out accuracy (%)")
        ax.set_title(f"max-LR sweep; shaded: within {args.band} points of each sweep's best")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot)
    report(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
