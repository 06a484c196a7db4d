"""The trackers beside TensorBoard: CSV, and MLflow on a real store, read back with its own client."""

import csv
import json
import os
import subprocess
import sys

import pytest
from test_resume import run

from conftest import ROOT, compose_train, write_image_tree
from resnet_onecycle.tasks import train

mlflow = pytest.importorskip("mlflow")


def debug_run(tmp_path, *overrides):
    tree = write_image_tree(tmp_path / "data", n_train=52, n_test=26)
    cfg = compose_train(["debug=fast", f"data.source={tree}", f"paths.data_dir={tmp_path / 'cache'}",
                         f"paths.log_dir={tmp_path / 'logs'}", "callbacks.progress_bar.refresh_rate=0", *overrides], tmp_path)
    return train(cfg), tmp_path / "run"


def checkpoints_in(client, run_id) -> list[str]:
    """The .ckpt files among a run's artifacts, one folder deep (Lightning logs each under its own)."""
    top = client.list_artifacts(run_id)
    return [f.path for d in top if d.is_dir for f in client.list_artifacts(run_id, d.path) if f.path.endswith(".ckpt")] \
        + [a.path for a in top if a.path.endswith(".ckpt")]


def store(tmp_path):
    return mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'logs' / 'mlflow.db'}")


def test_the_default_is_tensorboard_alone(tmp_path):
    assert list(compose_train([], tmp_path).logger) == ["tensorboard"]
    assert list(compose_train(["logger=many"], tmp_path).logger) == ["tensorboard", "csv", "mlflow"]
    assert list(compose_train(["logger=[tensorboard,csv]"], tmp_path).logger) == ["tensorboard", "csv"]


def test_csv_writes_the_epoch_metrics(tmp_path):
    summary, run_dir = debug_run(tmp_path, "logger=csv")
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    val = [float(r["val/acc"]) for r in rows if r.get("val/acc")]
    assert len(val) == 2 and val[-1] == pytest.approx(summary["val/acc"])
    assert "model.scheduler.max_lr" in (run_dir / "hparams.yaml").read_text()


def test_mlflow_holds_the_runs_params_metrics_tags_and_files(tmp_path):
    (tmp_path / "run" / ".hydra").mkdir(parents=True)  # as Hydra writes it before the task runs
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text("seed: 42\n")
    summary, run_dir = debug_run(tmp_path, "logger=many")
    client = store(tmp_path)
    (found,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert found.info.run_id == json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    assert found.info.status == "FINISHED" and found.info.run_name == run_dir.name
    assert found.data.params["model.scheduler.max_lr"] == "0.02" and found.data.params["data.batch_size"] == "64"
    assert found.data.metrics["test/acc"] == pytest.approx(summary["test/acc"])
    assert len(client.get_metric_history(found.info.run_id, "lr-SGD")) == 16  # every step, as in TensorBoard
    tags = found.data.tags
    assert tags["recipe"] == "default" and tags["device"].startswith("cpu") and tags["git_commit"]
    files = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"curves.png", "misclassified.png", "gradcam.png", "confusion_matrix.png", "report.md", "metrics.json"} <= files
    assert [a.path for a in client.list_artifacts(found.info.run_id, "hydra")] == ["hydra/config.yaml"]
    assert not checkpoints_in(client, found.info.run_id)  # the checkpoint only with logger.mlflow.log_model=true


@pytest.mark.slow
def test_a_resumed_run_continues_its_own_mlflow_run(tmp_path):
    tree = write_image_tree(tmp_path / "data", n_train=6, n_test=3)
    tracked = ["logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri=sqlite:///{tmp_path / 'logs' / 'mlflow.db'}",
               f"logger.mlflow.artifact_location={tmp_path / 'logs' / 'artifacts'}", "logger.mlflow.log_model=true"]
    sigterm = {"_target_": "test_resume.SendSignal", "at_step": 4}
    stopped, run_dir = run(tmp_path, "b", tree, *tracked, extra_callbacks=[sigterm])
    assert stopped["status"] == "interrupted"
    first = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    resumed, _ = run(tmp_path, "b", tree, *tracked, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert resumed["status"] == "completed"
    client = store(tmp_path)
    (found,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert found.info.run_id == first and found.info.status == "FINISHED"
    assert len(client.get_metric_history(first, "lr-SGD")) == 24  # the steps before the stop and after, in one run
    assert checkpoints_in(client, first)  # log_model=true: the checkpoints too


def test_an_unreachable_server_is_a_warning_and_the_run_completes(tmp_path, caplog):
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there once the socket closes
    with caplog.at_level("WARNING"):
        summary, run_dir = debug_run(tmp_path, "logger=[tensorboard,mlflow]",
                                     f"logger.mlflow.tracking_uri=http://127.0.0.1:{port}")
    assert summary["status"] == "completed" and not (run_dir / "mlflow_run.json").exists()
    assert "logger=mlflow: the tracker cannot be reached" in caplog.text and "tracking_uri" in caplog.text


@pytest.mark.slow
def test_a_sweep_is_one_parent_run_with_a_child_per_job(tmp_path):
    tree = write_image_tree(tmp_path / "data", n_train=52, n_test=26)
    result = subprocess.run(
        [sys.executable, "src/train.py", "-m", "debug=fast", "seed=1,2", "logger=[mlflow,wandb]", f"data.source={tree}",
         f"paths.data_dir={tmp_path / 'cache'}", f"paths.log_dir={tmp_path / 'logs'}", "analysis.enabled=false"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    client = store(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and {c.data.params["seed"] for c in children} == {"1", "2"}
    assert {"summary.csv", "summary.md", "summary.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    (sweep_dir,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    table = (sweep_dir / "summary.csv").read_text()
    assert all(c.info.run_id in table for c in children)  # each row names its child run
    records = [r.read_bytes() for r in (tmp_path / "logs" / "wandb" / "wandb").glob("offline-run-*/run-*.wandb")]
    assert len(records) == 2 and all(sweep_dir.name.encode() in r for r in records)  # one W&B group: the sweep's


@pytest.mark.slow
def test_a_run_reaches_a_real_mlflow_server(tmp_path):
    import time
    import urllib.request

    from test_use import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--workers", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()[-3000:]
                time.sleep(0.5)
        summary, run_dir = debug_run(tmp_path, "logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={url}",
                                     "analysis.enabled=false")
        run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/runs/get?run_id={run_id}", timeout=10) as response:
            found = json.loads(response.read())["run"]
        metrics = {m["key"]: m["value"] for m in found["data"]["metrics"]}
        assert found["info"]["status"] == "FINISHED" and metrics["test/acc"] == pytest.approx(summary["test/acc"])
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_wandb_offline_keeps_the_runs_config_metrics_and_pictures(tmp_path):
    pytest.importorskip("wandb")
    import wandb

    summary, run_dir = debug_run(tmp_path, "logger=[tensorboard,wandb]")
    wandb.teardown()  # what the end of a process does: wandb's service writes out what it holds
    (offline,) = (tmp_path / "logs" / "wandb" / "wandb").glob("offline-run-*")
    (record,) = offline.glob("run-*.wandb")  # what `wandb sync` uploads: config, history, summary, in wandb's log format
    data = record.read_bytes()
    # the config, tags, metrics, and the run's name (its run dir's)
    for key in (b"model.scheduler.max_lr", b"git_commit", b"lr-SGD", b"val/acc", b"test/acc", run_dir.name.encode()):
        assert key in data, key
    assert json.dumps(summary["test/acc"]).encode() in data  # the final test accuracy, as the run reported it
    pictures = list((offline / "files" / "media" / "images").glob("pictures_*.png"))
    assert len(pictures) == 4  # curves, mistakes, Grad-CAM, confusion


def test_a_missing_tracker_package_names_the_extra(tmp_path, monkeypatch):
    from hydra.errors import InstantiationException

    import resnet_onecycle.trackers as trackers
    from resnet_onecycle.errors import ConfigError

    def without_mlflow(entry):  # what Lightning's MLFlowLogger raises where mlflow is not installed, as Hydra wraps it
        try:
            raise ModuleNotFoundError("mlflow>=1.0.0 is not installed")
        except ModuleNotFoundError as error:
            raise InstantiationException("Error in call to target 'MLFlowLogger'") from error

    monkeypatch.setattr(trackers.hydra.utils, "instantiate", without_mlflow)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # and its import fails, as where it is not installed
    cfg = compose_train(["logger=[mlflow]"], tmp_path)
    with pytest.raises(ConfigError, match=r"logger=mlflow needs the `mlflow` extra .*pip install -e '\.\[mlflow\]'"):
        trackers.build(cfg, tmp_path / "run")
