"""Lightning DDP with 2 CPU processes (gloo): the same steps and LR schedule as one process, and
test metrics over the whole test split."""

import json
import re
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT, compose_train, write_image_tree


def train(tmp_path, name, tree, *overrides):
    result = subprocess.run(
        [sys.executable, str(ROOT / "src" / "train.py"), "debug=fast", f"data.source={tree}",
         f"paths.log_dir={tmp_path / name}", f"paths.data_dir={tmp_path / 'cache'}",
         "callbacks.progress_bar.refresh_rate=0", *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / name / "train" / "runs").iterdir()
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


def lrs(run_dir):
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("lr-SGD")]


@pytest.mark.slow
def test_ddp_keeps_the_recipe_and_reduces_metrics_over_the_whole_split(tmp_path):
    tree = write_image_tree(tmp_path / "data", n_train=52, n_test=26)
    from resnet_onecycle.tasks import train as train_here

    single = train_here(compose_train(["debug=fast", f"data.source={tree}", f"paths.data_dir={tmp_path / 'cache'}",
                                       "callbacks.progress_bar.refresh_rate=0", "analysis.enabled=false"],
                                      tmp_path / "single"))  # one process: no need for a new one
    single_dir = tmp_path / "single" / "run"
    ddp_dir, ddp = train(tmp_path, "ddp", tree, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                         "trainer.sync_batchnorm=false", "trainer.precision=32-true", "trainer.benchmark=null",
                         "test_ckpt=best", "callbacks.model_checkpoint.monitor=epoch", "callbacks.model_checkpoint.mode=max")
    assert ddp["global_steps"] == single["global_steps"] == 2 * 8  # global batch 64: 8 steps per epoch
    assert lrs(ddp_dir) == lrs(single_dir)
    assert ddp["test_images"] == single["test_images"] == 256
    assert (ddp_dir / "train_ddp_process_1.log").exists()  # there really was a second process
    assert (ddp_dir / "report.md").exists() and not list(ddp_dir.glob("**/metrics_rank*"))
    # every epoch-level value, the throughput included, is reduced across the processes
    assert [e["epoch"] for e in ddp["throughput_per_epoch"]] == [0, 1]
    assert "sync_dist=True" not in (ddp_dir / "train.log").read_text()
    # The logged test accuracy is the whole split's: one process evaluating the same weights agrees.
    result = subprocess.run([sys.executable, str(ROOT / "src" / "eval.py"),
                             f"ckpt_path={ddp_dir / 'checkpoints' / 'last.ckpt'}", f"paths.log_dir={tmp_path / 'eval'}",
                             f"paths.data_dir={tmp_path / 'cache'}",
                             "trainer.precision=32-true", "analysis.enabled=false"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (eval_dir,) = (tmp_path / "eval" / "eval" / "runs").iterdir()
    evaluated = json.loads((eval_dir / "metrics.json").read_text())
    assert evaluated["test/acc"] == ddp["test/acc"]


@pytest.mark.slow
def test_sigterm_to_rank_zero_stops_every_process_at_the_same_step(tmp_path):
    import signal
    import time

    tree = write_image_tree(tmp_path / "data")
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "src" / "train.py"), "debug=fast", f"data.source={tree}", "data.subset=null",
         "data.test_subset=null", "data.batch_size=8", "trainer.max_epochs=100", f"paths.log_dir={tmp_path / 'logs'}",
         f"paths.data_dir={tmp_path / 'cache'}", "callbacks.progress_bar.refresh_rate=0", "trainer=ddp",
         "trainer.accelerator=cpu", "trainer.devices=2", "trainer.sync_batchnorm=false", "trainer.precision=32-true",
         "trainer.benchmark=null"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = tmp_path / "logs" / "train" / "runs"
    deadline = time.time() + 180
    while time.time() < deadline and not list(runs.glob("*/checkpoints/*.ckpt")):  # the first epoch's best: training
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)  # rank 0 only; rank 1 learns of it through the all-reduce
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 143, stderr[-3000:]
    (run_dir,) = runs.iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["epochs"] < 100
    # Both processes write into one pipe: look for the message anywhere, not at line starts.
    stops = re.findall(r"Interrupted by SIGTERM at epoch \d+, step \d+", stderr)
    assert len(stops) == 2 and len(set(stops)) == 1, stderr[-3000:]  # both stopped, at the same epoch and step
