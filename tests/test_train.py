"""`python src/train.py` as a user runs it: outputs of a run, and bad input refused up front."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT, write_image_tree
from resnet_onecycle.errors import ConfigError


def run_train(*overrides: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, str(ROOT / "src" / "train.py"), *overrides],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def train_debug(tmp: Path, *overrides: str) -> tuple[Path, Path]:
    """`debug=fast` on 512 written training images; returns the run dir and the image tree."""
    from conftest import write_image_tree

    tree = write_image_tree(tmp / "data-src", n_train=52, n_test=26)
    result = run_train("debug=fast", f"data.source={tree}", f"paths.log_dir={tmp / 'logs'}",
                       f"paths.data_dir={tmp / 'cache'}", *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp / "logs" / "train" / "runs").iterdir()
    return run_dir, tree


@pytest.fixture(scope="module")
def debug_run(tmp_path_factory):
    # max_lr 0.015 learns in 2 epochs at every seed tried (1-8: test acc 0.68-0.90); 0.1 often does
    # not (24 seeds: half at or near chance), whatever the augmentation's random stream
    return train_debug(tmp_path_factory.mktemp("debug_run"), "seed=7", "model.scheduler.max_lr=0.015")


@pytest.mark.slow
def test_run_writes_metrics_json(debug_run):
    run_dir, tree = debug_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["epochs"] == 2 and metrics["global_steps"] == 2 * 8  # 512 images / 64
    assert 0 <= metrics["test/acc"] <= 1 and metrics["test/loss"] > 0
    assert metrics["train_images"] == 512 and metrics["test_images"] == 256
    assert metrics["data_source"] == str(tree)
    assert metrics["device"].startswith("cpu") and metrics["wall_time_s"] > 0
    assert metrics["seed"] == 7 and metrics["torch"] == torch.__version__
    # the classes are separable by colour: two epochs learn far more than chance
    assert metrics["test/acc"] > 0.3
    # the fit's time leaves out the data's preparation (a cold cache here: decoded in this run)
    assert metrics["data_prep_time_s"] > 0 and metrics["fit_time_s"] > 0
    assert metrics["fit_time_s"] + metrics["data_prep_time_s"] <= metrics["wall_time_s"]
    # throughput: each epoch's images/s; the FLOPs of a training image (forward and backward, width 0.125)
    assert [e["epoch"] for e in metrics["throughput_per_epoch"]] == [0, 1]
    assert all(e["images_per_s"] > 0 and "mfu" not in e for e in metrics["throughput_per_epoch"])  # no peak on a CPU
    assert metrics["images_per_s_median"] > 0
    assert 3e7 < metrics["flops_per_training_image"] < 4e7


def test_last_ckpt_is_the_last_epoch_and_test_ckpt_best_tests_the_best(tmp_path):
    from conftest import compose_train, write_image_tree
    from resnet_onecycle.tasks import train

    # the lowest epoch as "best": no epoch after the first improves (in this process: files are what is checked)
    tree = write_image_tree(tmp_path / "data-src", n_train=52, n_test=26)
    train(compose_train(["debug=fast", f"data.source={tree}", f"paths.data_dir={tmp_path / 'cache'}",
                         "trainer.max_epochs=3", "analysis.enabled=false", "test_ckpt=best", "callbacks.progress_bar=null",
                         "callbacks.model_checkpoint.monitor=epoch", "callbacks.model_checkpoint.mode=min",
                         "callbacks.throughput.peak_flops=1e12"], tmp_path))
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch000.ckpt", "last.ckpt"]
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == 3 * 8
    # validation runs on the test split: the best epoch's weights test as that epoch validated
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    val_acc = [e.value for e in events.Scalars("val/acc")]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/acc"] == pytest.approx(val_acc[0]) and val_acc[0] != val_acc[-1]
    # with a peak given, the model FLOPs utilisation: images/s x FLOPs of an image / peak, each epoch
    for epoch, logged in zip(metrics["throughput_per_epoch"], events.Scalars("train/mfu"), strict=True):
        expected = epoch["images_per_s"] * metrics["flops_per_training_image"] / 1e12
        assert epoch["mfu"] == pytest.approx(expected, rel=1e-3, abs=1e-4) and logged.value == pytest.approx(epoch["mfu"])


@pytest.mark.slow
def test_a_run_without_test_ends_on_its_validation_accuracy(tmp_path):
    run_dir, _ = train_debug(tmp_path, "test=false")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "test/acc" not in metrics and 0 <= metrics["val/acc"] <= 1
    assert not (run_dir / "report.md").exists()  # the pictures and report come with the test
    last_line = (run_dir / "train.log").read_text().splitlines()[-1]
    assert f"val/acc {metrics['val/acc']:.4f} (test=false: no test)" in last_line and "nan" not in last_line


@pytest.mark.slow
def test_compiled_runs_learn_save_plain_weights_and_share_the_compile_cache(tmp_path):
    # true: torch's default mode on a CPU (the modes that differ from it are GPU ones: gpu.sh runs them)
    cache = tmp_path / "compile-cache"
    run_dir, _ = train_debug(tmp_path / "cold", "model.compile=true", f"paths.compile_cache_dir={cache}")
    cold = json.loads((run_dir / "metrics.json").read_text())
    # Not compared step by step with an eager run: the same batches and weights give the same first
    # losses, but the fused kernels' rounding grows chaotically within a few steps at this scale.
    assert cold["status"] == "completed" and cold["test/acc"] > 0.3
    # what torch.compile did is recorded: the net compiled whole, for training and evaluation
    assert cold["compile"]["mode"] == "default" and cold["compile"]["graphs"] >= 2
    assert cold["compile"]["graph_breaks"] == 0 and cold["compile"]["cache_dir"] == str(cache)
    assert cold["compile"]["fxgraph_cache_misses"] >= 2 and cold["compile"]["fxgraph_cache_hits"] == 0
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(k.startswith(("net.", "val_acc_best")) for k in state["state_dict"])  # loads in an eager net

    # a second run, another process: every graph comes from the cache (torch's hit counters)
    run_dir, _ = train_debug(tmp_path / "warm", "model.compile=true", f"paths.compile_cache_dir={cache}")
    warm = json.loads((run_dir / "metrics.json").read_text())
    assert warm["compile"]["fxgraph_cache_misses"] == 0 and warm["compile"]["autograd_cache_misses"] == 0
    assert warm["compile"]["fxgraph_cache_hits"] >= 2 and warm["compile"]["autograd_cache_hits"] >= 1
    assert 0 < warm["compile_time_s"] < cold["compile_time_s"]


@pytest.mark.parametrize("setting, mode, device, warned", [
    ("reduce-overhead", "reduce-overhead", "cuda", True), ("true", "reduce-overhead", "cuda", True),
    ("default", "default", "cuda", False), ("true", "default", "cpu", False),
    ("reduce-overhead", "reduce-overhead", "cpu", False), ("cudagraphs", "cudagraphs", "cuda", True)])
def test_skipped_cuda_graphs_are_recorded_and_warned_about(tmp_path, monkeypatch, caplog, setting, mode, device, warned):
    from conftest import compose_train
    from resnet_onecycle import compile_cache, framework

    cfg = compose_train([f"model.compile={setting}"], tmp_path)
    before = {"graphs": 3, "graph_breaks": 1, "cudagraph_skips": 2}
    readings = []

    def counts_since(since=None):
        readings.append(since)
        return {"graphs": 4, "graph_breaks": 0, "cudagraph_skips": 2, "compile_time_s": 1.5}

    monkeypatch.setattr(framework, "compile_counters", counts_since)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    record = compile_cache.report(cfg.model.compile, before, torch.device(device))
    assert readings == [before]  # the run's counts: those since the reading taken before fit
    assert record == {"compile_time_s": 1.5, "compile": {"mode": mode, "cache_dir": str(tmp_path), "graphs": 4,
                                                         "graph_breaks": 0, "cudagraph_skips": 2}}
    assert ("CUDA graphs were skipped 2 times" in caplog.text) == warned


def test_compile_counters_since_a_reading_count_what_was_compiled_since():
    from resnet_onecycle.framework import compile_counters

    torch.compile(lambda x: x + 1, backend="eager")(torch.ones(3))  # dynamo only: no code generation
    before = compile_counters()
    assert before["graphs"] >= 1
    double = torch.compile(lambda x: x * 2, backend="eager")
    double(torch.ones(3))
    double(torch.ones(3))  # the same graph again: not a new one
    since = compile_counters(since=before)
    assert {k: since.pop(k) for k in ("graphs", "graph_breaks", "cudagraph_skips")} == {"graphs": 1, "graph_breaks": 0,
                                                                                         "cudagraph_skips": 0}
    assert since.pop("compile_time_s") > 0  # the eager backend: tracing the frame alone
    assert since == {"fxgraph_cache_hits": 0, "fxgraph_cache_misses": 0, "autograd_cache_hits": 0,
                     "autograd_cache_misses": 0}  # no inductor, no AOTAutograd
    assert compile_counters()["graphs"] == before["graphs"] + 1


def test_git_commit_says_when_tracked_files_changed(tmp_path):
    from resnet_onecycle.summary import git_commit

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-q", "-m", "a")
    sha = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    (tmp_path / "notes.txt").write_text("untracked files do not count\n")
    assert git_commit(tmp_path) == sha
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == sha + "-dirty"
    assert git_commit(tmp_path / "nowhere") is None


@pytest.mark.slow
def test_run_writes_config_and_checkpoints(debug_run):
    run_dir, _ = debug_run
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert config["model"]["net"]["width"] == 0.125 and config["seed"] == 7
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and any(n.startswith("epoch") for n in checkpoints)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 1 and state["global_step"] == 16
    assert all(k.startswith(("net.", "val_acc_best")) for k in state["state_dict"])


@pytest.mark.slow
def test_run_writes_tensorboard_scalars_and_hparams(debug_run):
    run_dir, _ = debug_run
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/acc", "test/loss",
                "train/images_per_s"):
        assert tag in scalars, tag
    assert len(events.Scalars("train/images_per_s")) == 2 and all(e.value > 0 for e in events.Scalars("train/images_per_s"))
    assert len(events.Scalars("val/acc")) == 2  # per epoch
    lrs = [e.value for e in events.Scalars("lr-SGD")]
    assert len(lrs) == 16 and lrs[0] == pytest.approx(0.0015) and max(lrs) == pytest.approx(0.015)
    assert len(events.Scalars("lr-SGD-momentum")) == 16
    with pytest.raises(ValueError):  # no graph unless logger.tensorboard.log_graph=true (torch.jit.trace warns)
        events.Graph()
    hparams = b"".join(events.PluginTagToContent("hparams").values())
    for name in (b"model.scheduler.max_lr", b"data.batch_size", b"git_commit", b"torch", b"lightning", b"test/acc"):
        assert name in hparams, name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test_acc = [e.value for e in events.Scalars("test/acc")]
    assert test_acc[-1] == pytest.approx(metrics["test/acc"])


@pytest.mark.parametrize(
    "override, named",  # the error's kind is asserted, and that it names the key and the value at fault
    [
        ("data.batch_size=0", "data.batch_size=0"),
        ("data.batch_size=big", "data.batch_size='big'"),
        ("model.scheduler.max_lr=-0.1", "model.scheduler.max_lr=-0.1"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0"),
        ("model.net.width=0", "model.net.width=0"),
        ("model.net.width=wide", "model.net.width='wide'"),
        ("model.scheduler.max_lr=fast", "model.scheduler.max_lr='fast'"),
        ("trainer.max_epochs=2.5", "trainer.max_epochs=2.5"),
        ("model.scheduler.peak_epoch=2", "trainer.max_epochs=2"),  # the run's 2 epochs leave none after the peak
        ("data.source=/no/such/cifar.tar.gz", "data.source='/no/such/cifar.tar.gz'"),
        ("ckpt_path=/no/such.ckpt", "ckpt_path='/no/such.ckpt'"),
        ("test_ckpt=middle", "test_ckpt='middle'"),
        ("+trainer.sync_batchnorm=true", "trainer.sync_batchnorm=true"),
        ("seed=abc", "seed='abc'"),
        ("test=maybe", "test='maybe'"),
        ("model.scheduler.max_lr=auto lr_find.min_lr=0", "lr_find.min_lr=0"),
    ],
)
def test_bad_input_is_refused_before_training(tmp_path, image_tree, override, named):
    """In-process, as src/train.py runs it: the error is the project's own, raised before any data
    is read or any checkpoint written (test_first_contact checks the exit code and the console)."""
    from conftest import compose_train
    from resnet_onecycle.cli import as_user_error
    from resnet_onecycle.errors import UserError
    from resnet_onecycle.tasks import train

    cfg = compose_train(["debug=fast", f"data.source={image_tree}", f"paths.data_dir={tmp_path / 'cache'}",
                         *override.split()], tmp_path)
    with pytest.raises(Exception) as raised:
        train(cfg)
    error = as_user_error(raised.value)
    assert isinstance(error, UserError) and named in str(error), repr(raised.value)
    assert not list(tmp_path.rglob("*.ckpt")) and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("overrides, named", [
    (["data.batch_size=1024"], "data.batch_size=1024 is larger than the 512 training images"),
    (["data.subset=64", "trainer.max_epochs=3"], "warm-up of 1 step"),  # one step an epoch, the peak after the first
])
def test_values_that_only_the_data_shows_wrong_are_refused_before_a_step(tmp_path, overrides, named):
    from conftest import compose_train
    from resnet_onecycle.tasks import train

    tree = write_image_tree(tmp_path / "data", n_train=52, n_test=26)  # 520 training images
    cfg = compose_train(["debug=fast", f"data.source={tree}", f"paths.data_dir={tmp_path / 'cache'}", *overrides],
                        tmp_path)
    with pytest.raises(ConfigError, match=re.escape(named)):
        train(cfg)
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.slow
def test_a_resume_of_a_dir_that_does_not_exist_is_refused_and_creates_nothing(tmp_path, image_tree):
    result = run_train("debug=fast", f"data.source={image_tree}", f"paths.log_dir={tmp_path / 'logs'}",
                       "resume=/no/such/run")
    assert result.returncode == 2 and "resume='/no/such/run': not a run dir" in result.stderr
    assert "Traceback" not in result.stderr and not Path("/no/such/run").exists()


@pytest.mark.slow
def test_download_without_network_is_a_clear_error(tmp_path):
    # No network here: the default source must fail fast with the way out. Where a copy was already
    # downloaded into data_dir this would train instead, so point data_dir at an empty folder.
    result = run_train("debug=fast", f"paths.log_dir={tmp_path / 'logs'}", f"paths.data_dir={tmp_path / 'empty'}",
                       "+trainer.max_time=00:00:00:30")
    if result.returncode == 0:
        pytest.skip("this machine reached the network and downloaded CIFAR-10")
    assert result.returncode == 2
    assert "data.source=download could not fetch CIFAR-10" in result.stderr
    assert "cifar-10-python.tar.gz" in result.stderr and "../shared" not in result.stderr


@pytest.mark.slow
def test_logs_dir_that_cannot_be_written(tmp_path, image_tree):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_train("debug=fast", f"data.source={image_tree}", f"paths.log_dir={blocker / 'logs'}")
    assert result.returncode == 2
    assert "cannot create the run dir" in result.stderr and "paths.log_dir" in result.stderr
    assert "Traceback" not in result.stderr
    assert blocker.read_text() == "not a folder"


@pytest.mark.slow
def test_a_logs_dir_that_cannot_be_written_is_one_error_line(tmp_path, image_tree):
    (tmp_path / "logs").write_text("not a folder")  # paths.log_dir defaults to <paths.root_dir>/logs
    result = run_train("debug=fast", f"data.source={image_tree}", f"paths.root_dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 2
    assert f"cannot create the run dir {tmp_path / 'logs'}" in result.stderr and "paths.log_dir" in result.stderr
    assert "Traceback" not in result.stderr and "HydraConfig was not set" not in result.stderr
    assert (tmp_path / "logs").read_text() == "not a folder"


def test_logs_and_data_land_under_the_checkout_whatever_the_working_dir(tmp_path):
    result = run_train("--cfg", "job", "--resolve", cwd=tmp_path)
    paths = yaml.safe_load(result.stdout)["paths"]
    assert paths["log_dir"] == str(ROOT / "logs") and paths["data_dir"] == str(ROOT / "data")
    assert not list(tmp_path.iterdir())


def test_a_run_says_how_long_its_training_steps_will_take(tmp_path, caplog):
    from conftest import compose_train
    from resnet_onecycle.tasks import train

    tree = write_image_tree(tmp_path / "data", n_train=52, n_test=26)
    cfg = compose_train(["debug=fast", f"data.source={tree}", f"paths.data_dir={tmp_path / 'cache'}", "test=false",
                         "analysis.enabled=false"], tmp_path)
    with caplog.at_level("INFO", logger="resnet_onecycle.callbacks"):
        train(cfg)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("About ")]
    assert len(said) == 1 and "for this fit's training steps (2 epochs of 8 steps" in said[0] and "CPU" in said[0]


def test_the_duration_is_said_as_a_person_would():
    from resnet_onecycle.callbacks import duration

    assert [duration(s) for s in (40, 25 * 60, 3 * 3600 + 600, 13 * 3600)] == ["40 s", "25 min", "3.2 h", "13 h"]


def test_a_refused_command_removes_only_the_run_dir_it_made_and_only_if_it_holds_nothing_else(tmp_path, monkeypatch):
    from resnet_onecycle import launching

    fresh = tmp_path / "fresh"
    launching.make_dir_or_exit(str(fresh), "run dir")
    (fresh / ".hydra").mkdir()
    (fresh / "train.log").write_text("error")
    (fresh / "metrics.json").write_text("{}")
    assert launching.remove_refused_run_dir(fresh, "train") and not fresh.exists()

    launching.make_dir_or_exit(str(fresh), "run dir")
    (fresh / "lr_find.png").write_bytes(b"a picture")  # work done before the refusal: kept
    assert not launching.remove_refused_run_dir(fresh, "train") and (fresh / "lr_find.png").exists()

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    launching.make_dir_or_exit(str(resumed), "run dir")  # a dir that was there: a resumed run's
    assert not launching.remove_refused_run_dir(resumed, "train") and resumed.exists()
