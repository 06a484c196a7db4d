"""Where a whole fit's time goes, by part, from cProfile over `tasks.train` (what src/train.py runs).

Runs the recipe once to warm the data cache and the process, then again under cProfile, and prints
one JSON object: the fit's time, and the cumulative seconds of each part below (a part's calls
nested in another's count in both: training steps hold their hooks). The profiler's own cost
inflates every part a little, alike.

    python benchmarks/fit_parts.py experiment=cpu_fast model.net.width=0.125 data.subset=4096 \\
        data.test_subset=1024 trainer.max_epochs=4 model.scheduler.peak_epoch=1 data.source=...
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import pstats
import sys
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]

# part -> (file suffix, function name) of the call whose cumulative time is the part's
PARTS = {
    "data_preparation": ("data/cifar10.py", "prepare_data"),
    "data_setup": ("data/cifar10.py", "setup"),
    "sanity_check": ("trainer/trainer.py", "_run_sanity_check"),
    "training_steps": ("loops/optimization/automatic.py", "run"),
    "validation": ("loops/evaluation_loop.py", "run"),
    "checkpoint_saves": ("trainer/trainer.py", "save_checkpoint"),
    "logger_writes": ("loggers/tensorboard.py", "log_metrics"),
    "model_summary": ("callbacks/model_summary.py", "on_fit_start"),
    "throughput_sync_and_flops": ("resnet_onecycle/callbacks.py", "on_fit_start"),
}


def parts(stats: pstats.Stats) -> dict[str, float]:
    found = dict.fromkeys(PARTS, 0.0)
    for (file, _, function), (_, _, _, cumulative, _) in stats.stats.items():
        for part, (suffix, name) in PARTS.items():
            if function == name and file.endswith(suffix):
                found[part] = max(found[part], cumulative)  # the outermost call (recursion counts once)
    return {part: round(seconds, 3) for part, seconds in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for src/train.py")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]
    from resnet_onecycle.tasks import train

    # Lightning's tables and progress go to stderr: stdout is the JSON alone
    with tempfile.TemporaryDirectory() as out, initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"), \
            contextlib.redirect_stdout(sys.stderr):
        def config(name: str):
            return compose("train", overrides=[f"paths.root_dir={ROOT}", f"paths.output_dir={out}/{name}",
                                               "analysis.enabled=false", "callbacks.progress_bar=null", *args.overrides])
        train(config("warm-up"))
        profile = cProfile.Profile()
        profile.enable()
        summary = train(config("profiled"))
        profile.disable()
    stats = pstats.Stats(profile)
    trainer_fit = next((c for (f, _, n), (_, _, _, c, _) in stats.stats.items()
                        if n == "fit" and f.endswith("trainer/trainer.py")), None)
    print(json.dumps({"overrides": args.overrides, "trainer_fit_s": round(trainer_fit, 3),
                      "fit_time_s": summary["fit_time_s"], "data_prep_time_s": summary.get("data_prep_time_s"),
                      "parts_s": parts(stats)}, indent=2))


if __name__ == "__main__":
    main()
