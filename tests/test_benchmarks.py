"""The benchmark scripts run end to end on a tiny net, and their JSON holds what RESULTS.md reads.

They are what a lent GPU's few minutes are spent on, so a broken one must show here, not there.
"""

import io
import json
import math
import runpy
import statistics
import sys
from contextlib import redirect_stdout

import pytest
import torch

from conftest import ROOT, compose_train, write_image_tree
from resnet_onecycle.models import MixedResNet

# 10 steps an epoch
TINY = ["debug=fast", "model.net.width=0.0625", "data.batch_size=32", "data.subset=320", "data.test_subset=40"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    tree = write_image_tree(tmp / "data-src", n_train=32, n_test=4)
    return tmp, [*TINY, f"data.source={tree}", f"paths.data_dir={tmp / 'cache'}"]


def run(script: str, *args: str) -> dict:
    """The script as `python benchmarks/<script> <args>` runs it, in this process (a new one costs
    seconds of imports); its JSON from stdout. The threads it sets are put back."""
    threads, argv, path, out = torch.get_num_threads(), sys.argv, list(sys.path), io.StringIO()
    sys.argv = [script, *args]
    sys.path.insert(0, str(ROOT / "benchmarks"))  # where Python looks first for a script's imports
    try:
        with redirect_stdout(out):
            runpy.run_path(str(ROOT / "benchmarks" / script), run_name="__main__")
    except SystemExit as exit:
        if exit.code not in (None, 0):
            raise
    finally:
        sys.argv, sys.path[:] = argv, path
        torch.set_num_threads(threads)
    text = out.getvalue()
    return json.loads(text[text.index("{"):])


def test_throughput_times_project_plain_loop_and_lightning_alone(tiny):
    tmp, overrides = tiny
    result = run("throughput.py", "--epochs", "2", "--rounds", "2", "--bare", "--json", str(tmp / "t.json"), *overrides)
    assert json.loads((tmp / "t.json").read_text()) == result
    assert result["train_images"] == 320 and result["batch_size"] == 32 and result["width"] == 0.0625
    assert result["parameters"] == sum(p.numel() for p in MixedResNet(0.0625).parameters()) and result["host"]
    for path in ("project", "plain", "lightning_bare"):
        assert result[path]["images_per_s"] > 0
        assert len(result[path]["epoch_times_s"]) == 2 and all(len(r) == 2 for r in result[path]["epoch_times_s"])
    ratio = result["project"]["images_per_s"] / result["plain"]["images_per_s"]
    assert result["ratio_project_over_plain"] == pytest.approx(ratio, abs=1e-3)
    assert len(result["ratio_per_round"]) == 2 and "compile" not in result["project"]
    # every other round in reverse order, so that a drift of the machine weighs on all paths alike
    assert result["order_per_round"] == [["project", "lightning_bare", "plain"], ["plain", "lightning_bare", "project"]]


def test_throughput_with_a_null_net_times_the_hosts_work_per_step(tiny):
    _, overrides = tiny
    result = run("throughput.py", "--epochs", "2", "--null-net", *overrides)
    assert result["width"] == "null net" and result["parameters"] == 3072 * 10 + 10  # one Linear layer
    assert result["order_per_round"] == [["project", "plain"]] and list(result["step_ms_over_plain"]) == ["project"]
    for path in ("project", "plain"):  # 10 steps an epoch; steady_epoch_s is rounded to 1 ms
        assert result[path]["step_ms"] == pytest.approx(result[path]["steady_epoch_s"] / 10 * 1e3, abs=0.05)
    assert result["step_ms_over_plain"]["project"] == pytest.approx(
        result["project"]["step_ms"] - result["plain"]["step_ms"], abs=1e-3)


def test_host_syncs_counts_each_step_and_splits_the_plain_loops_step_by_part(tiny):
    tmp, overrides = tiny
    result = run("host_syncs.py", "--start", "3", "--stop", "8", *overrides)
    assert result["steps"] == [3, 8]
    for path in ("project", "plain"):
        counts = result[path]
        assert counts["syncs_per_step"]["aten::_local_scalar_dense"] == 0  # no .item() in a step
        assert counts["aten_ops_per_step"] > 100 and counts["wall_ms_per_step"] > 0
        assert counts["compiled_graph_calls_per_step"] == {}  # model.compile is off
    parts = result["plain"]["per_step_by_part"]
    assert list(parts) == ["augment", "forward", "backward", "optimizer"]
    assert all(part["aten_ops"] > 0 and part["host_ms"] > 0 for part in parts.values())
    assert sum(part["aten_ops"] for part in parts.values()) <= result["plain"]["aten_ops_per_step"]
    assert "per_step_by_part" not in result["project"]  # Lightning's step is not split


def test_host_syncs_says_when_an_epoch_is_too_short(tiny):
    _, overrides = tiny
    with pytest.raises(SystemExit, match="fewer than --stop=30 steps"):
        run("host_syncs.py", "--stop", "30", *overrides)


def test_epoch_parts_splits_every_epoch_of_a_training_run(tiny, monkeypatch):
    from resnet_onecycle.tasks import train

    tmp, overrides = tiny
    out = tmp / "parts.json"
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # as PYTHONPATH=benchmarks does for the callback
    train(compose_train([*overrides, "trainer.max_epochs=3", "test=false", "callbacks.progress_bar=null",
                         "+callbacks.epoch_parts._target_=epoch_parts.EpochParts", f"+callbacks.epoch_parts.path={out}"],
                        tmp / "parts"))
    parts = json.loads(out.read_text())
    assert [e["epoch"] for e in parts["epochs"]] == [0, 1, 2] and parts["sync"] is False
    for e in parts["epochs"]:
        assert min(e["train_s"], e["val_s"], e["after_val_s"]) > 0
        assert e["epoch_s"] == pytest.approx(e["train_s"] + e["val_s"] + e["after_val_s"], abs=1e-3)
    assert parts["median_after_first"]["epoch_s"] == pytest.approx(
        statistics.median(e["epoch_s"] for e in parts["epochs"][1:]), abs=1e-4)


def test_fit_parts_splits_a_profiled_fit_by_part(tiny):
    tmp, overrides = tiny
    result = run("fit_parts.py", *overrides, "trainer.max_epochs=2")
    parts = result["parts_s"]
    assert set(parts) == set(runpy.run_path(str(ROOT / "benchmarks" / "fit_parts.py"))["PARTS"])
    assert min(parts["training_steps"], parts["validation"], parts["checkpoint_saves"], parts["data_preparation"]) > 0
    assert parts["sanity_check"] == 0  # off
    assert parts["training_steps"] < result["trainer_fit_s"]
    assert result["fit_time_s"] == pytest.approx(result["trainer_fit_s"] - result["data_prep_time_s"], abs=0.05)


def test_checkpoint_writes_times_the_loop_with_each_way_of_writing(tmp_path):
    result = run("checkpoint_writes.py", "--width", "0.0625", "--steps", "3", "--ops", "10", "--epochs", "2",
                 "--rounds", "2", "--json", str(tmp_path / "w.json"))
    assert json.loads((tmp_path / "w.json").read_text()) == result
    assert result["device"] == "cpu" and result["width"] == 0.0625 and result["checkpoint_mb"] > 0
    assert all(len(times) == 4 for times in result["epoch_times_s"].values())  # 2 epochs x 2 rounds a way
    median = result["epoch_s_median"]
    for way in ("lightning", "project"):
        assert median[way] == pytest.approx(statistics.median(result["epoch_times_s"][way]), abs=1e-4)
        assert result["writes_add_ms_per_epoch"][way] == pytest.approx((median[way] - median["none"]) * 1e3, abs=0.2)


def test_accuracy_trains_the_recipe_through_the_project_and_a_plain_loop(tiny):
    tmp, overrides = tiny
    result = run("accuracy.py", "--seeds", "0,1", "--json", str(tmp / "a.json"), *overrides, "callbacks=ema",
                 "model.tta=flip", "model.label_smoothing=0.1")
    assert json.loads((tmp / "a.json").read_text()) == result
    assert result["epochs"] == 2 and result["width"] == 0.0625 and result["test_images"] == 40
    for path in ("project", "plain"):
        runs = result[path]["runs"]
        assert [r["seed"] for r in runs] == [0, 1]
        assert all(0 <= r["test_acc"] <= 1 and r["fit_time_s"] > 0 for r in runs)
        assert result[path]["test_acc_mean"] == pytest.approx(statistics.mean(r["test_acc"] for r in runs), abs=1e-4)
        assert result[path]["test_acc_std"] == pytest.approx(statistics.stdev(r["test_acc"] for r in runs), abs=1e-4)
    assert all(len(r["val_acc_per_epoch"]) == 2 for r in result["plain"]["runs"])  # validated every epoch
    assert result["accuracy_project_minus_plain"] == pytest.approx(
        result["project"]["test_acc_mean"] - result["plain"]["test_acc_mean"], abs=1e-4)


def test_lr_sweep_sets_the_range_tests_suggestion_against_the_sweeps_band(tmp_path):
    def job(sweep, num, max_lr, acc):
        folder = sweep / str(num)
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(f"- model.scheduler.max_lr={max_lr}\n")
        (folder / "metrics.json").write_text(json.dumps({"status": "completed", "val/acc": acc}))

    for seed, accs in enumerate(([0.50, 0.60, 0.60, 0.40], [0.52, 0.61, 0.606, 0.42])):
        for num, (max_lr, acc) in enumerate(zip((0.01, 0.02, 0.05, 0.1), accs)):
            job(tmp_path / f"sweep{seed}", num, max_lr, acc)
    lrs = [1e-4 * 10 ** (i / 20) for i in range(100)]  # the lowest loss at 0.0316, then divergence
    losses = [2.3 - 0.5 * math.exp(-((math.log10(lr) + 1.5) ** 2)) + (5 * lr if lr > 0.0316 else 0) for lr in lrs]
    (tmp_path / "lr_find.json").write_text(json.dumps({"lr": lrs, "loss": losses}))
    result = run("lr_sweep.py", "--plot", str(tmp_path / "p.png"),
                 f"seed={tmp_path / 'sweep0'},{tmp_path / 'sweep1'}:{tmp_path / 'lr_find.json'}")["seed"]
    assert result["val_acc_by_max_lr"] == {"0.01": 0.51, "0.02": 0.605, "0.05": 0.603, "0.1": 0.41}
    assert result["runs_per_max_lr"] == {"0.01": 2, "0.02": 2, "0.05": 2, "0.1": 2}
    # 0.02 and 0.05 lie within 0.5 points of the best; the band reaches halfway (geometrically) to 0.01 and 0.1
    assert result["band"] == [pytest.approx(math.sqrt(0.01 * 0.02), abs=1e-4), pytest.approx(math.sqrt(0.05 * 0.1), abs=1e-4)]
    assert result["suggestion"] == pytest.approx(0.03, rel=0.1) and result["inside"] is True
    assert (tmp_path / "p.png").stat().st_size > 0


def gpu_recipes():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_recipes
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return gpu_recipes


def test_gpu_recipes_picks_by_held_out_accuracy_and_cuts_epochs_to_the_fit_target():
    g = gpu_recipes()
    held_out = {"fast_best": {"status": "completed", "val/acc": 0.930}, "tta_flip": {"status": "completed", "val/acc": 0.925},
                "batch_256": {"status": "completed", "val/acc": 0.933}, "lookahead": {"status": "failed"}}
    assert g.pick(held_out) == "batch_256"
    assert g.pick({**held_out, "batch_256": {"status": "completed", "val/acc": 0.930}}) == "fast_best"  # a tie: listed first
    # 16.7 s at 24 epochs of 0.6 s: 2.15 s over 97% of 15 s, so 4 epochs cut
    assert g.epochs_within({"fit_time_s": 16.7, "epoch_time_s_median": 0.6}, 24, 15.0) == 20
    assert g.epochs_within({"fit_time_s": 14.5, "epoch_time_s_median": 0.6}, 24, 15.0) == 24
    assert g.schedule(20) == ["trainer.max_epochs=20", "model.scheduler.peak_epoch=4"]
    runs = [{"status": "completed", "epochs": 20, "test/acc": a, "fit_time_s": f} for a, f in ((0.93, 14.1), (0.94, 14.3))]
    result = g.recipe_result([*runs, {"status": "diverged"}, None], ["experiment=fast_best"])
    assert result["runs"] == 2 and result["test_acc"]["mean"] == 0.935 and result["fit_time_s_max"] == 14.3
    assert result["test_acc"]["std"] == pytest.approx(statistics.stdev([0.93, 0.94]), abs=1e-4)
    markdown = g.summary_markdown({"date": "d", "held_out": {"fast_best": {"overrides": [], "val_acc": 0.93, "fit_time_s": 13.0}},
                                   "chosen": "fast_best", "fast_best": result})
    assert "| fast_best (chosen) | - | 93.00% | 13.0 s |" in markdown
    assert "| fast_best | experiment=fast_best | 20 | 93.50% ± 0.71 | 93.00%, 94.00% | 14.2 s (14.3 s) |" in markdown


def test_gpu_recipes_frontier_plan_picks_then_runs_fast_best_whole_and_fast_15s_cut_to_the_target(tmp_path, monkeypatch):
    g, calls = gpu_recipes(), []
    winner = list(g.CANDIDATES)[-1]

    def train(stages, name, *overrides):  # a run whose fit is 2 s plus 1 s an epoch; fast_15s's YAML has 13
        calls.append(name)
        epochs = int(next((o.split("=")[1] for o in overrides if o.startswith("trainer.max_epochs=")), 13))
        return {"status": "completed", "epochs": epochs, "val/acc": 0.95 if winner in name else 0.93,
                "test/acc": 0.94, "fit_time_s": 2 + epochs, "epoch_time_s_median": 1.0, "device": "GPU", "torch": "t",
                "overrides": list(overrides)}

    monkeypatch.setattr(g.Stages, "train", train)
    monkeypatch.setattr(g.Stages, "warm_cache", lambda stages: None)
    monkeypatch.setattr(sys, "argv", ["gpu_recipes.py", "--plan", "frontier", "--out", str(tmp_path)])
    with redirect_stdout(io.StringIO()):
        g.main()
    # fast_15s: 15 s at 13 epochs is 0.45 s over 97% of 15 s: one epoch of 1 s cut
    assert calls == [*(f"held_out_{name}" for name in g.CANDIDATES), *(f"fast_best_seed{s}" for s in range(3)),
                     "fast_15s_seed0", *(f"fast_15s_12ep_seed{s}" for s in range(3)), *(f"fast_seed{s}" for s in range(3))]
    result = json.loads((tmp_path / "summary.json").read_text())
    assert result["chosen"] == winner
    assert result["fast_best"]["overrides"] == ["experiment=fast_best", *g.CANDIDATES[winner], *g.schedule(24)]
    assert result["fast_best"]["runs"] == 3 and result["fast_best"]["epochs"] == 24
    assert result["fast_15s"]["overrides"] == ["experiment=fast_15s", *g.CANDIDATES[winner], *g.schedule(12)]
    assert result["fast_15s"]["runs"] == 3 and result["fast_15s"]["fit_time_s_max"] == 14
    assert result["fast_15s_over_target"]["epochs"] == 13 and result["fast"]["runs"] == 3
    assert f"| {winner} (chosen) |" in (tmp_path / "summary.md").read_text()


def test_gpu_recipes_fit_plan_compiles_cold_then_warm_and_compares_with_eager(tmp_path, monkeypatch):
    g, calls = gpu_recipes(), []

    def train(stages, name, *overrides):  # compiled: 10 s of compiling when cold, 1 s warm; MFU 0.2 after epoch 0
        calls.append((name, overrides))
        compiled = "model.compile=true" in overrides
        compile_s = (10.0 if "cold" in name else 1.0) if compiled else None
        return {"status": "completed", "epochs": 24, "test/acc": 0.93, "fit_time_s": 9 + (compile_s or 4),
                "compile_time_s": compile_s, "images_per_s_median": 1e5, "device": "GPU", "torch": "t",
                "throughput_per_epoch": [{"epoch": 0, "mfu": 0.01}, {"epoch": 1, "mfu": 0.2}, {"epoch": 2, "mfu": 0.2}]}

    monkeypatch.setattr(g.Stages, "train", train)
    monkeypatch.setattr(g.Stages, "warm_cache", lambda stages: None)
    monkeypatch.setattr(g, "accuracy_benchmark", lambda stages, result: calls.append(("accuracy_fast", ())))
    monkeypatch.setattr(sys, "argv", ["gpu_recipes.py", "--out", str(tmp_path)])
    with redirect_stdout(io.StringIO()):
        g.main()
    names = [name for name, _ in calls]
    assert names == ["accuracy_fast", "fast_best_compiled_cold_seed0", *(f"fast_best_compiled_warm_seed{s}" for s in range(3)),
                     *(f"fast_best_eager_seed{s}" for s in range(3))]
    caches = {o for _, overrides in calls for o in overrides if o.startswith("paths.compile_cache_dir=")}
    assert len(caches) == 1  # one cache: the cold run fills it, the warm runs read it
    result = json.loads((tmp_path / "summary.json").read_text())
    assert result["fast_best_compiled_cold"]["compile_time_s"]["mean"] == 10.0
    assert result["fast_best_compiled_warm"]["runs"] == 3 and result["fast_best_compiled_warm"]["fit_time_s"]["mean"] == 10.0
    assert result["fast_best_eager"]["mfu_median"]["mean"] == 0.2  # the epochs after the first
    assert "| fast_best_compiled_warm | 10.0 s | 1.0 | 100000.0 | 0.2 |" in (tmp_path / "summary.md").read_text()


def test_frontier_draws_each_recipe_and_peer_with_the_spread_over_seeds(tmp_path):
    result = tmp_path / "h200"
    result.mkdir()
    entry = {"overrides": ["experiment=fast_15s", "data.cutout_size=0", "trainer.max_epochs=12", "model.scheduler.peak_epoch=2"],
             "runs": 2, "epochs": 12, "test_acc": {"values": [0.91, 0.92]}, "fit_time_s": {"values": [13.0, 14.0]}}
    summary = {"device": "GPU", "date": "d", "held_out": {"x": {"val_acc": 0.9}}, "fast_15s": entry,
               "fast": {"runs": 0}, "chosen": "x"}
    (result / "summary.json").write_text(json.dumps(summary))
    (result / "peer.log").write_text("peer airbench94 run 0: tta acc 0.9000, plain acc 0.89, 2.0 s\n"
                                     "noise\npeer airbench94 run 1: tta acc 0.9100, plain acc 0.90, 3.0 s\n")
    out = tmp_path / "frontier.png"
    with redirect_stdout(io.StringIO()):
        run_frontier = runpy.run_path(str(ROOT / "benchmarks" / "frontier.py"))
        sys.argv, argv = ["frontier.py", str(result), "--out", str(out)], sys.argv
        try:
            run_frontier["main"]()
        finally:
            sys.argv = argv
    points = {p["name"]: p for p in json.loads(out.with_suffix(".json").read_text())["points"]}
    recipe = points["fast_15s, cutout_size=0, 12 epochs"]
    assert recipe["runs"] == 2 and recipe["acc_mean"] == pytest.approx(0.915) and recipe["fit_s_max"] == 14.0
    assert recipe["acc_std"] == pytest.approx(statistics.stdev([0.91, 0.92]))
    peer = points["airbench94 (its own net and recipe)"]
    assert peer["kind"] == "peer" and peer["runs"] == 2 and peer["fit_s_mean"] == 2.5
    assert len(points) == 2 and out.stat().st_size > 0  # fast had no run
