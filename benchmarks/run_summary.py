"""One run dir -> one JSON: its metrics.json plus each validation's accuracy and epoch wall times.

    python benchmarks/run_summary.py logs/train/runs/<run> [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def summarize(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "metrics.json").read_text())
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    summary["val_acc_per_epoch"] = [round(e.value, 4) for e in events.Scalars("val/acc")]
    # An epoch's wall time (training, and validation where it ran) is the gap between successive
    # train/acc events, logged at every epoch's end whatever the validation interval.
    ends = events.Scalars("train/acc")
    gaps = [b.wall_time - a.wall_time for a, b in zip(ends, ends[1:])]
    if gaps:
        summary["epoch_time_s_median"] = round(statistics.median(gaps), 3)
        summary["epoch_time_s_min"] = round(min(gaps), 3)
        # From the event file's creation (the start of fit) to the first epoch's end: set-up,
        # cuDNN autotuning and compilation, then one epoch. Minus a median epoch: the start-up alone.
        summary["first_epoch_s"] = round(ends[0].wall_time - events.FirstEventTimestamp(), 3)
        summary["startup_s"] = round(summary["first_epoch_s"] - summary["epoch_time_s_median"], 3)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    text = json.dumps(summarize(args.run_dir), indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
