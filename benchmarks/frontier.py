"""The accuracy-per-second frontier as a picture: test accuracy against fit time for the named
recipes measured by `gpu_recipes.py` (its summary.json), and for the peers run on the same data in
the same lease (their logs beside it), with the spread over seeds as error bars.

    python benchmarks/frontier.py benchmarks/results/2026-12-04-h200 [more result dirs] --out docs/frontier.png

A recipe is drawn from each summary entry with a `test_acc` over one run or more, labelled by what
it ran (the experiment, its other overrides, its epochs; the title names the commit the runs
record, as a named recipe may change after); a peer from every line
`peer NAME run I: tta acc A, plain acc B, T s` in a `*.log` of the same dir (its own network and
recipe, with its own TTA). The points, as drawn, go to a JSON beside the picture.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

PEER_LINE = re.compile(r"peer (\S+) run \d+: tta acc ([\d.]+), plain acc ([\d.]+), ([\d.]+) s")
SKIPPED = {"trainer.max_epochs", "model.scheduler.peak_epoch"}  # said by the epochs


def label(entry: dict) -> str:
    """experiment, then the other overrides by their last key, then the epochs."""
    overrides = [o for o in entry["overrides"] if o.split("=", 1)[0] not in SKIPPED]
    experiment = next((o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")), "train")
    extras = [o.split("=", 1)[0].rsplit(".", 1)[-1] + "=" + o.split("=", 1)[1]
              for o in overrides if not o.startswith("experiment=")]
    return ", ".join([experiment, *extras, f"{entry['epochs']} epochs"])


def point(name: str, accs: list[float], times: list[float], kind: str) -> dict:
    return {"name": name, "kind": kind, "runs": len(accs), "acc_mean": statistics.mean(accs),
            "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "fit_s_mean": statistics.mean(times),
            "fit_s_min": min(times), "fit_s_max": max(times)}


def recipes(summary: dict) -> list[dict]:
    points = []
    for entry in summary.values():
        if not isinstance(entry, dict) or not entry.get("runs") or "test_acc" not in entry:
            continue
        accs, times = entry["test_acc"]["values"], entry["fit_time_s"]["values"]
        points.append(point(label(entry), accs, times, "recipe"))
    return points


def peers(result_dir: Path) -> list[dict]:
    runs: dict[str, list[tuple[float, float]]] = {}
    for log in sorted(result_dir.glob("*.log")):
        for match in PEER_LINE.finditer(log.read_text()):
            runs.setdefault(match[1], []).append((float(match[2]), float(match[4])))
    return [point(f"{name} (its own net and recipe)", [a for a, _ in rs], [t for _, t in rs], "peer")
            for name, rs in runs.items()]


def collect(result_dirs: list[Path]) -> tuple[list[dict], str]:
    points, titles = [], []
    for result_dir in result_dirs:
        summary = json.loads((result_dir / "summary.json").read_text())
        points += recipes(summary) + peers(result_dir)
        runs = json.loads((result_dir / "runs.json").read_text()) if (result_dir / "runs.json").is_file() else {}
        commit = next((str(r["git_commit"]).split()[0] for r in runs.values() if r.get("git_commit")), None)
        # a recipe's YAML may change later: the commit says which one ran
        titles.append(f"{summary.get('device')}, {summary.get('date')}" + (f", recipes as of {commit}" if commit else ""))
    return points, "; ".join(dict.fromkeys(titles))


def draw(points: list[dict], title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(8, 5))
    for p in points:
        style = {"recipe": dict(marker="o", color="tab:blue"), "peer": dict(marker="s", color="tab:gray")}[p["kind"]]
        xerr = [[p["fit_s_mean"] - p["fit_s_min"]], [p["fit_s_max"] - p["fit_s_mean"]]]
        ax.errorbar(p["fit_s_mean"], 100 * p["acc_mean"], xerr=xerr, yerr=100 * p["acc_std"], capsize=3, **style)
        ax.annotate(f"{p['name']} (n={p['runs']})", (p["fit_s_mean"], 100 * p["acc_mean"]), fontsize=7,
                    xytext=(5, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlim(min(p["fit_s_min"] for p in points) / 1.5, max(p["fit_s_max"] for p in points) * 4)  # room for labels
    ax.set_xlabel("fit time, s (log scale; bars: fastest to slowest run; peers: their own timer)")
    ax.set_ylabel("test accuracy, % (bars: std over seeds)")
    ax.set_title(f"CIFAR-10, JPEG copy: {title}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result_dirs", nargs="+", type=Path, help="dirs with gpu_recipes.py's summary.json")
    parser.add_argument("--out", type=Path, default=Path("docs/frontier.png"))
    args = parser.parse_args()
    points, title = collect(args.result_dirs)
    if not points:
        raise SystemExit(f"no recipe or peer with a test accuracy in {', '.join(map(str, args.result_dirs))}")
    draw(points, title, args.out)
    args.out.with_suffix(".json").write_text(json.dumps({"title": title, "points": points}, indent=2) + "\n")
    for p in points:
        print(f"{p['name']}: {100 * p['acc_mean']:.2f}% ± {100 * p['acc_std']:.2f} (n={p['runs']}), fit {p['fit_s_mean']:.1f} s")


if __name__ == "__main__":
    main()
