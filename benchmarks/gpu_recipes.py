"""The GPU measurements in one go. Two plans (--plan):

`fit` (the default, about 8 minutes on an H200): the whole fit against a plain loop, and the
compiled fit with a warm cache.
1. `benchmarks/accuracy.py` on `experiment=fast` over --seeds: the project's fit against a plain
   loop's (both train and validate every epoch; the plain loop writes no checkpoint);
2. `experiment=fast_best model.compile=true` with an empty compile cache (seed --seeds[0]): the
   compilation's cost, kept in the cache;
3. the same over --seeds with that cache warm: the fit a user sees from the second compiled run;
4. `experiment=fast_best` eager over --seeds: the accuracy and fit that compiled is compared with.
Every run logs images/s and the model FLOPs utilisation each epoch (`--peak-flops`, since
Lightning's table has no plain "NVIDIA H200").

`frontier` (about 8 minutes on an H200): the named recipes settled by rules fixed here in advance,
the most important rows first:

1. held-out: fast_best as it is, and with one trick switched (CANDIDATES), one seed, trained on
   45,000 images and validated on the 5,000 held out (`data.val_size=5000 test=false`, --val-size);
2. fast_best: the candidate with the best held-out accuracy, over --seeds, tested on the test
   split, at its full 24 epochs;
3. fast_15s: `experiment=fast_15s` with the same candidate's changes, over --seeds. Where the
   first seed's fit takes longer than --fit-target seconds, the epochs are cut to what fits
   (`epochs_within`, from its median epoch, the peak epoch scaled with them) and every seed runs
   at that length;
4. fast: `experiment=fast` over --seeds, the reference in the same lease.

Every run is its own process, as a user's would be, with the pictures off (`analysis.enabled=false`:
they change neither the fit nor the test). A stage is skipped when less of --budget is left than
it needs. Into --out, after every run and stage, so that a run cut short still leaves them:
runs.json (each run's run_summary.py JSON), summary.json and summary.md (the tables RESULTS.md
takes); accuracy.py's JSON beside them. Prints summary.md at the end.

On the GPU machine, from the project's root:
    source .device/gpu-env.sh && python3 benchmarks/gpu_recipes.py --out "$OUT" 2>&1 | tee "$OUT/gpu.log"
CPU dry runs (a few minutes each on 2 cores):
    python benchmarks/gpu_recipes.py --out /tmp/dry --data <copy> --trainer trainer=cpu --epochs 3 --budget 1500 \\
        --peak-flops 1e12 model.net.width=0.0625 data.subset=2048 data.test_subset=512
    python benchmarks/gpu_recipes.py --plan frontier --out /tmp/dry --data <copy> --trainer trainer=cpu --epochs 3 \\
        --fit-target 3 --val-size 512 --budget 1500 model.net.width=0.0625 data.subset=2048 data.test_subset=512
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_summary import summarize  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Each a change to experiment=fast_best (fast + label smoothing 0.2 + multi-view TTA, validated once
# at the end): one trick switched, the likeliest first (CPU proxy ranks: benchmarks/RESULTS.md, "Tricks").
CANDIDATES = {
    "fast_best": [],
    "no_cutout": ["data.cutout_size=0"],
    "batch_256": ["data.batch_size=256"],
    "tta_flip": ["model.tta=flip"],
    "no_label_smoothing": ["model.label_smoothing=0.0"],
    "alternating_flip": ["data.flip=alternate"],
    "lookahead": ["callbacks=lookahead"],
    "bn_frozen_bias_lr_x64": ["model.freeze_bn_weights=true", "model.bn_bias_lr_scale=64"],
    "batch_1024_lr_0.8": ["data.batch_size=1024", "model.scheduler.max_lr=0.8"],
}
PEAK_SHARE = 5 / 24  # fast's LR peaks at the end of epoch 5 of 24


def pick(held_out: dict[str, dict]) -> str:
    """The candidate with the best held-out accuracy; a tie goes to the one listed first."""
    done = [name for name in CANDIDATES if held_out.get(name, {}).get("status") == "completed"]
    return max(done, key=lambda name: held_out[name]["val/acc"])


def epochs_within(run: dict, epochs: int, target_s: float, margin: float = 0.97) -> int:
    """The most epochs whose fit stays under `margin * target_s`: the measured fit less a median
    epoch for each epoch cut."""
    over = run["fit_time_s"] - margin * target_s
    return epochs if over <= 0 else max(2, epochs - math.ceil(over / run["epoch_time_s_median"]))


def schedule(epochs: int) -> list[str]:
    return [f"trainer.max_epochs={epochs}", f"model.scheduler.peak_epoch={max(1, round(PEAK_SHARE * epochs))}"]


def spread(runs: list[dict], key: str, digits: int) -> dict:
    values = [r[key] for r in runs if r.get(key) is not None]
    return {"mean": round(statistics.mean(values), digits) if values else None,
            "std": round(statistics.stdev(values), digits) if len(values) > 1 else None, "values": values}


class Stages:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work, self.start = args, work, time.monotonic()
        self.runs: dict[str, dict] = {}
        self.common = [f"data.source={args.data}", f"paths.data_dir={work / 'data'}", f"paths.log_dir={work / 'logs'}",
                       "analysis.enabled=false", *args.trainer.split(), *args.overrides]

    def warm_cache(self) -> None:
        """Decodes the data into its cache before the first run, so that no run's fit time holds it."""
        code = "import sys; from resnet_onecycle.data.cache import load_cached; load_cached(*sys.argv[1:])"
        subprocess.run([sys.executable, "-c", code, self.args.data, str(self.work / "data")], cwd=ROOT, check=True)

    def left(self) -> float:
        return self.args.budget - (time.monotonic() - self.start)

    def fits(self, name: str, need: float) -> bool:
        print(f"== {name} ({self.left():.0f} s left)" if self.left() >= need else f"== skip {name}: {self.left():.0f} s left",
              flush=True)
        return self.left() >= need

    def train(self, name: str, *overrides: str) -> dict | None:
        """One run of src/train.py, its own process; its summary, also kept in OUT/runs.json."""
        if not self.fits(name, self.args.run_need):
            return None
        run_dir = self.work / "runs" / name
        command = [sys.executable, "src/train.py", *overrides, *self.common, f"hydra.run.dir={run_dir}"]
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=max(1, self.left() - 5))
        except subprocess.TimeoutExpired:
            print(f"   {name}: out of time")
            return None
        if not (run_dir / "metrics.json").is_file():
            print(f"   {name}: no metrics.json (exit {done.returncode})\n{done.stderr[-2000:]}")
            return None
        summary = self.runs[name] = {"overrides": list(overrides), **summarize(run_dir)}
        (self.args.out / "runs.json").write_text(json.dumps(self.runs, indent=2))
        print(f"   {name}: " + "  ".join(f"{k} {summary.get(k)}" for k in
                                          ("status", "epochs", "val/acc", "test/acc", "fit_time_s", "epoch_time_s_median")),
              flush=True)
        if summary.get("status") != "completed":
            print(done.stderr[-2000:])
        return summary

    def seeds(self, name: str, *overrides: str) -> list[dict | None]:
        return [self.train(f"{name}_seed{seed}", *overrides, f"seed={seed}") for seed in self.args.seeds]


def recipe_result(runs: list[dict], overrides: list[str]) -> dict:
    runs = [r for r in runs if r and r.get("status") == "completed"]
    for run in runs:  # the median MFU over the epochs after the first (start-up, compilation, autotuning)
        mfu = [e["mfu"] for e in run.get("throughput_per_epoch", [])[1:] if "mfu" in e]
        if mfu:
            run["mfu_median"] = round(statistics.median(mfu), 4)
    return {"overrides": overrides, "runs": len(runs), "epochs": runs[0]["epochs"] if runs else None,
            "test_acc": spread(runs, "test/acc", 4), "fit_time_s": spread(runs, "fit_time_s", 2),
            "fit_time_s_max": max((r["fit_time_s"] for r in runs), default=None),
            "compile_time_s": spread(runs, "compile_time_s", 2), "images_per_s_median": spread(runs, "images_per_s_median", 0),
            "mfu_median": spread(runs, "mfu_median", 4)}


def fast_best(stages: Stages, chosen: str, result: dict) -> None:
    """The chosen candidate over the seeds, at its full length."""
    recipe = ["experiment=fast_best", *CANDIDATES[chosen], *schedule(stages.args.epochs)]
    result["fast_best"] = recipe_result(stages.seeds("fast_best", *recipe), recipe)


def fast_15s(stages: Stages, chosen: str, result: dict) -> None:
    """experiment=fast_15s with the chosen changes over the seeds, at the length whose fit meets the target."""
    args, recipe = stages.args, ["experiment=fast_15s", *CANDIDATES[chosen]]
    first = stages.train(f"fast_15s_seed{args.seeds[0]}", *recipe, f"seed={args.seeds[0]}")
    if not first or "epoch_time_s_median" not in first:
        return
    epochs = epochs_within(first, first["epochs"], args.fit_target)
    if epochs == first["epochs"]:
        runs = [first, *(stages.train(f"fast_15s_seed{s}", *recipe, f"seed={s}") for s in args.seeds[1:])]
    else:
        print(f"   fast_15s: fit {first['fit_time_s']} s at {first['epochs']} epochs: cut to {epochs} for {args.fit_target} s")
        result["fast_15s_over_target"] = recipe_result([first], recipe)
        recipe = [*recipe, *schedule(epochs)]
        runs = stages.seeds(f"fast_15s_{epochs}ep", *recipe)
    result["fast_15s"] = recipe_result(runs, recipe)


def frontier_plan(stages: Stages, result: dict) -> None:
    """The `frontier` plan: held-out candidates, then fast_best, fast_15s and fast over the seeds."""
    args, length = stages.args, schedule(stages.args.epochs)
    held_out_split = [f"data.val_size={args.val_size}", "test=false"]
    runs = {name: stages.train(f"held_out_{name}", "experiment=fast_best", *held_out_split, *length, *changes)
            for name, changes in CANDIDATES.items()}
    held_out = {name: run for name, run in runs.items() if run}
    result["held_out"] = {name: {"overrides": CANDIDATES[name], "val_acc": run.get("val/acc"),
                                 "fit_time_s": run.get("fit_time_s")} for name, run in held_out.items()}
    save(args.out, result)
    if any(run.get("status") == "completed" for run in held_out.values()):
        result["chosen"] = pick(held_out)
        fast_best(stages, result["chosen"], result)
        save(args.out, result)
        fast_15s(stages, result["chosen"], result)
        save(args.out, result)
    fast = stages.seeds("fast", "experiment=fast", *length)
    result["fast"] = recipe_result(fast, ["experiment=fast", *length])


def accuracy_benchmark(stages: Stages, result: dict) -> None:
    """benchmarks/accuracy.py on experiment=fast: the project and a plain loop, each seed."""
    args, path = stages.args, stages.args.out / "accuracy_fast.json"
    if not stages.fits("accuracy_fast", len(args.seeds) * args.run_need * 1.2):
        return
    command = [sys.executable, "benchmarks/accuracy.py", "--seeds", ",".join(map(str, args.seeds)), "--json", str(path),
               "experiment=fast", *schedule(args.epochs), *stages.common, "callbacks.throughput.peak_flops=null"]
    try:
        subprocess.run(command, cwd=ROOT, capture_output=True, timeout=max(1, stages.left() - 5))
    except subprocess.TimeoutExpired:
        print("   accuracy_fast: out of time")
    if path.is_file():
        accuracy = json.loads(path.read_text())
        ways = {way: {k: v for k, v in accuracy[way].items() if k != "runs"} for way in ("project", "plain")}
        keys = ("accuracy_project_minus_plain", "speed_project_over_plain")
        result["accuracy_fast"] = {**{k: accuracy.get(k) for k in keys}, **ways}


def fit_plan(stages: Stages, result: dict) -> None:
    """The `fit` plan: accuracy.py on fast, then fast_best compiled (cold, then warm) and eager."""
    args, length = stages.args, schedule(stages.args.epochs)
    accuracy_benchmark(stages, result)
    save(args.out, result)
    compiled = ["experiment=fast_best", *length, "model.compile=true", f"paths.compile_cache_dir={stages.work / 'compile'}"]
    cold = stages.train(f"fast_best_compiled_cold_seed{args.seeds[0]}", *compiled, f"seed={args.seeds[0]}")
    result["fast_best_compiled_cold"] = recipe_result([cold], compiled[:-1])
    warm = stages.seeds("fast_best_compiled_warm", *compiled)
    result["fast_best_compiled_warm"] = recipe_result(warm, compiled[:-1])
    save(args.out, result)
    eager = stages.seeds("fast_best_eager", "experiment=fast_best", *length)
    result["fast_best_eager"] = recipe_result(eager, ["experiment=fast_best", *length])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="where the JSON files and summary.md go")
    parser.add_argument("--plan", choices=("fit", "frontier"), default="fit", help="what to measure (see above)")
    parser.add_argument("--peak-flops", type=float, default=9.9e14,
                        help="the device's peak FLOP/s for MFU: Lightning's figure for an H200 SXM in bf16, "
                             "half its sparse 2.0e15")
    parser.add_argument("--data", default=".device/cifar10-jpeg.tar.gz", help="data.source for every run")
    parser.add_argument("--trainer", default="trainer=gpu", help="the trainer overrides, e.g. trainer=cpu")
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=24, help="the recipes' length before any cut")
    parser.add_argument("--fit-target", type=float, default=15.0, help="fast_15s's fit time target, seconds")
    parser.add_argument("--budget", type=float, default=520.0, help="seconds for everything")
    parser.add_argument("--val-size", type=int, default=5000, help="the held-out split's size")
    parser.add_argument("--run-need", type=float, default=40.0, help="seconds a run must have left to start")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (a dry run's small net)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    args.overrides = [f"callbacks.throughput.peak_flops={args.peak_flops}", *args.overrides]
    with tempfile.TemporaryDirectory() as work:
        stages = Stages(args, Path(work))
        stages.warm_cache()
        result = {"date": time.strftime("%Y-%m-%d"), "plan": args.plan, "budget_s": args.budget,
                  "fit_target_s": args.fit_target, "held_out": {}}
        (fit_plan if args.plan == "fit" else frontier_plan)(stages, result)
        first = next(iter(stages.runs.values()), {})
        result["device"], result["torch"] = first.get("device"), first.get("torch")
        print(save(args.out, result))
    print(f"== done in {time.monotonic() - stages.start:.0f} s")


def save(out: Path, result: dict) -> str:
    """summary.json and summary.md, as far as the stages got; the markdown."""
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    markdown = summary_markdown(result)
    (out / "summary.md").write_text(markdown)
    return markdown


def summary_markdown(result: dict) -> str:
    def percent(value):
        return "-" if value is None else f"{100 * value:.2f}%"

    lines = [f"{result.get('device')}, torch {result.get('torch')}, {result['date']}", "",
             "| held-out candidate (on experiment=fast_best) | overrides | held-out acc | fit |", "| --- | --- | --- | --- |"]
    for name, run in result["held_out"].items():
        chosen = " (chosen)" if name == result.get("chosen") else ""
        overrides = " ".join(run["overrides"]) or "-"
        lines.append(f"| {name}{chosen} | {overrides} | {percent(run['val_acc'])} | {run['fit_time_s']} s |")
    lines += ["", "| recipe | overrides | epochs | test acc, mean ± std | each seed | fit, mean (max) |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name in ("fast", "fast_best", "fast_15s", "fast_15s_over_target", "fast_best_compiled_cold",
                 "fast_best_compiled_warm", "fast_best_eager"):
        r = result.get(name)
        if not r or not r["runs"]:
            continue
        acc, fit = r["test_acc"], r["fit_time_s"]
        std = f" ± {100 * acc['std']:.2f}" if acc["std"] is not None else ""
        seeds = ", ".join(percent(v) for v in acc["values"])
        lines.append(f"| {name} | {' '.join(r['overrides'])} | {r['epochs']} | {percent(acc['mean'])}{std} | {seeds} | "
                     f"{fit['mean']} s ({r['fit_time_s_max']} s) |")
    timed = [(name, result[name]) for name in ("fast_best_compiled_cold", "fast_best_compiled_warm", "fast_best_eager")
             if result.get(name, {}).get("runs")]
    if timed:
        lines += ["", "| run | fit, mean | compile_time_s, mean | images/s, median epoch | MFU, median epoch |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {name} | {r['fit_time_s']['mean']} s | {r['compile_time_s']['mean']} | "
                  f"{r['images_per_s_median']['mean']} | {r['mfu_median']['mean']} |" for name, r in timed]
    if "accuracy_fast" in result:
        lines += ["", f"accuracy.py, experiment=fast: {json.dumps(result['accuracy_fast'])}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
