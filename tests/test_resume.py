"""Reliability: interrupts, exact resumption, refused schedule changes, divergence, reproducibility."""

import json
import os
import signal
import subprocess
import sys
import time

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import open_dict

from conftest import ROOT, compose_train, write_image_tree
from resnet_onecycle.errors import ConfigError, TrainingInterrupted
from resnet_onecycle.resume import DivergenceError
from resnet_onecycle.rundir import check_same_schedule, resume_problem
from resnet_onecycle.tasks import train

# 3 epochs of 8 steps (60 training images, batches of 8), deterministic, on the CPU.
SMALL = ["debug=fast", "data.subset=null", "data.test_subset=null", "data.batch_size=8",
         "trainer.max_epochs=3", "trainer.deterministic=true", "model.scheduler.max_lr=0.1",
         "callbacks.progress_bar.refresh_rate=0", "logger.tensorboard.log_graph=false",
         "analysis.enabled=false"]  # no pictures: the weights and metrics are what is compared


class SendSignal(L.Callback):
    """Sends this process `signum` at the end of training step `at_step` (0-based)."""

    def __init__(self, at_step: int, signum: int = signal.SIGTERM) -> None:
        self.at_step, self.signum = at_step, signum

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step - 1 == self.at_step:
            os.kill(os.getpid(), self.signum)


class PoisonWeights(L.Callback):
    """Makes the weights NaN at the end of step `at_step`, so the next loss is NaN."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, module, *args) -> None:
        if trainer.global_step - 1 == self.at_step:
            with torch.no_grad():
                module.net.fc.weight.fill_(float("nan"))


def run(tmp_path, name, image_tree, *overrides, extra_callbacks=()):
    cfg = compose_train([*SMALL, f"data.source={image_tree}", f"paths.data_dir={tmp_path / 'cache'}", *overrides],
                        tmp_path / name)
    with open_dict(cfg):  # the guards run after them: they act at the step theirs acted
        cfg.callbacks = {**{f"extra{i}": c for i, c in enumerate(extra_callbacks)}, **cfg.callbacks}
    try:
        return train(cfg), tmp_path / name / "run"
    except TrainingInterrupted:  # what the run says of itself
        return json.loads((tmp_path / name / "run" / "metrics.json").read_text()), tmp_path / name / "run"


def final_weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("uninterrupted")
    tree = write_image_tree(tmp / "data")
    summary, run_dir = run(tmp, "a", tree)
    return tree, summary, final_weights(run_dir)


@pytest.mark.parametrize("stop_after_step", [4, 12])  # mid-epoch 0, mid-epoch 1
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, uninterrupted, stop_after_step):
    tree, reference, reference_weights = uninterrupted
    before = signal.getsignal(signal.SIGTERM)
    sigterm = {"_target_": "test_resume.SendSignal", "at_step": stop_after_step}
    summary, run_dir = run(tmp_path, "b", tree, extra_callbacks=[sigterm])
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM"
    assert summary["global_steps"] == stop_after_step + 1  # the guard stops at the end of that step
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["resume"].endswith(f"resume={run_dir}")
    assert signal.getsignal(signal.SIGTERM) is before  # the handler restored after the run

    resumed, _ = run(tmp_path, "b", tree, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert resumed["status"] == "completed" and resumed["global_steps"] == 24 and resumed["epochs"] == 3
    weights = final_weights(run_dir)
    assert weights.keys() == reference_weights.keys()
    for key in weights:
        assert torch.equal(weights[key], reference_weights[key]), key
    assert resumed["test/acc"] == reference["test/acc"] and resumed["test/loss"] == reference["test/loss"]


def test_sigint_is_handled_like_sigterm(tmp_path, uninterrupted):
    tree, _, _ = uninterrupted
    before = signal.getsignal(signal.SIGINT)
    sigint = {"_target_": "test_resume.SendSignal", "at_step": 2, "signum": int(signal.SIGINT)}
    summary, run_dir = run(tmp_path, "g", tree, extra_callbacks=[sigint])
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGINT"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    assert signal.getsignal(signal.SIGINT) is before


def test_resuming_with_another_schedule_is_refused_by_the_checkpoint(tmp_path, uninterrupted):
    tree, _, _ = uninterrupted
    sigterm = {"_target_": "test_resume.SendSignal", "at_step": 4}
    _, run_dir = run(tmp_path, "c", tree, extra_callbacks=[sigterm])
    with pytest.raises(ConfigError, match=r"total_steps 24 in the checkpoint, 32 now"):
        run(tmp_path, "c", tree, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=4")
    with pytest.raises(ConfigError, match=r"max_lr 0\.1 in the checkpoint, 0\.2 now"):
        run(tmp_path, "c", tree, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "model.scheduler.max_lr=0.2")


def test_divergence_stops_at_once_and_keeps_the_last_good_checkpoint(tmp_path, uninterrupted, monkeypatch):
    tree, _, _ = uninterrupted
    save = TorchCheckpointIO.save_checkpoint  # slow writes: epoch 0's is still queued when the loss turns NaN
    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", lambda *a, **k: (time.sleep(1), save(*a, **k)))
    poison = {"_target_": "test_resume.PoisonWeights", "at_step": 11}  # epoch 1; the loss of step 12 is NaN
    with pytest.raises(DivergenceError) as error:
        run(tmp_path, "d", tree, extra_callbacks=[poison])
    message = str(error.value)
    assert "loss became nan at step 12 (epoch 1)" in message and "model.scheduler.max_lr" in message
    run_dir = tmp_path / "d" / "run"
    # the first epoch's best-epoch checkpoint (last.ckpt is not due yet: callbacks.last_checkpoint.every_s)
    assert f"The last good checkpoint, {run_dir / 'checkpoints' / 'epoch000.ckpt'}, is kept." in message
    checkpoint = torch.load(run_dir / "checkpoints" / "epoch000.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == 0  # saved after epoch 0; nothing was saved once the loss was NaN
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values() if t.is_floating_point())
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "diverged"


class NonFiniteLoss(L.Callback):
    """Reports a NaN loss for step `at_step`, as a step that diverged would (the weights stay finite)."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, module, outputs, *args) -> None:
        if trainer.global_step - 1 == self.at_step:
            outputs["loss"] = torch.tensor(float("nan"))


def test_a_timed_save_never_follows_a_non_finite_loss(tmp_path, uninterrupted):
    tree, _, _ = uninterrupted
    nan = {"_target_": "test_resume.NonFiniteLoss", "at_step": 5}  # mid-epoch 0, long before the guard's 50-step read
    with pytest.raises(DivergenceError, match="loss became nan at step 5"):
        run(tmp_path, "t", tree, "callbacks.last_checkpoint.every_s=0", extra_callbacks=[nan])
    checkpoints = tmp_path / "t" / "run" / "checkpoints"
    assert [p.name for p in checkpoints.glob("*.ckpt")] == ["last.ckpt"]
    assert torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 5  # step 4's


def test_divergence_names_the_lr_of_the_step():
    from resnet_onecycle.resume import DivergenceGuard

    class Trainer:
        global_step, current_epoch, num_training_batches, world_size = 7, 0, 100, 1
        optimizers = [torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.25)]
        checkpoint_callback, default_root_dir, strategy = None, "/nowhere", None
        should_stop = False
        lightning_module = None

    guard = DivergenceGuard(check_every_n_steps=1)
    guard.on_train_batch_start(Trainer, None, None, 0)
    with pytest.raises(DivergenceError, match=r"loss became inf at step 6 \(epoch 0\) with LR 0\.25\. .*No checkpoint"):
        guard.on_train_batch_end(Trainer, None, {"loss": torch.tensor(float("inf"))}, None, 0)


def test_same_seed_same_metrics_other_seed_other_metrics(tmp_path, uninterrupted):
    tree, reference, reference_weights = uninterrupted
    again, run_dir = run(tmp_path, "e", tree)
    for key in ("test/acc", "test/loss", "train/loss", "val/acc"):
        assert again[key] == reference[key], key
    assert all(torch.equal(final_weights(run_dir)[k], v) for k, v in reference_weights.items())
    other, _ = run(tmp_path, "f", tree, "seed=1")
    assert other["train/loss"] != reference["train/loss"]
    for key in ("seed", "git_commit", "torch", "lightning", "hydra"):
        assert key in again
    assert again["seed"] == 42 and again["torch"] == torch.__version__


# --- the command line: SIGTERM from outside, the message, resume=<run dir> ------------------------


def start_train(*overrides):
    return subprocess.Popen([sys.executable, str(ROOT / "src" / "train.py"), *overrides], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigterm_saves_and_resume_continues_the_same_run(tmp_path):
    tree = write_image_tree(tmp_path / "data")
    common = ["debug=fast", f"data.source={tree}", "data.subset=null", "data.test_subset=null",
              "data.batch_size=4", f"paths.log_dir={tmp_path / 'logs'}", f"paths.data_dir={tmp_path / 'cache'}",
              "callbacks.progress_bar.refresh_rate=0", "analysis.enabled=false"]
    process = start_train(*common, "trainer.max_epochs=12")
    runs = tmp_path / "logs" / "train" / "runs"
    deadline = time.time() + 120
    while time.time() < deadline and not list(runs.glob("*/checkpoints/*.ckpt")):  # the first epoch's best: training
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-2000:]
    (run_dir,) = runs.iterdir()
    assert f"Resume with: python src/train.py resume={run_dir}" in stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["epochs"] < 12
    config_before = (run_dir / ".hydra" / "config.yaml").read_text()

    another = compose_train([*common, "trainer.max_epochs=13", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"],
                            tmp_path / "another")
    with pytest.raises(ConfigError, match="trainer.max_epochs: 12 in the run, 13 now"):
        check_same_schedule(another)

    resumed = subprocess.run([sys.executable, str(ROOT / "src" / "train.py"), f"resume={run_dir}",
                              "callbacks.progress_bar.refresh_rate=0"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    console = resumed.stdout + resumed.stderr
    assert "Decoding" not in console  # the run's own data dir and cache, not ./data
    assert "WARNING" not in console  # nor Lightning's word on a checkpoint dir that is the run's own
    assert list(runs.iterdir()) == [run_dir]  # the same run dir, no new one
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 12 and metrics["global_steps"] == 12 * 15
    assert (run_dir / ".hydra" / "config.yaml").read_text() == config_before  # kept; the resume's lies beside
    assert list((run_dir / ".hydra").glob("resumed-*/overrides.yaml"))
    assert "that run completed" in resume_problem(str(run_dir))  # a finished run resumed by mistake is refused


def test_resume_refuses_what_it_cannot_continue(tmp_path):
    from omegaconf import OmegaConf

    from resnet_onecycle.rundir import resumed_config

    cfg = OmegaConf.create({"resume": str(tmp_path / "run"), "paths": {}})
    with pytest.raises(ConfigError, match=r"not a run dir \(no \.hydra/config\.yaml"):
        resumed_config(cfg, [], set())
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text("model: {scheduler: {max_lr: 0.02}}\ndata: {}\ntrainer: {}\n")
    assert resumed_config(cfg, [], set()).ckpt_path is None  # stopped before its first checkpoint: from the start
    (tmp_path / "run" / "checkpoints").mkdir()
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"`experiment=original` \(a config group\) cannot apply"):
        resumed_config(cfg, ["resume=x", "experiment=original"], {"experiment", "model"})
    resumed = resumed_config(cfg, [f"resume={tmp_path / 'run'}"], {"experiment"})
    assert resumed.ckpt_path == str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert resumed.model.scheduler.max_lr == 0.02


def test_the_schedule_keys_resume_compares_are_keys_of_the_config(tmp_path):
    from omegaconf import OmegaConf

    from resnet_onecycle.rundir import SCHEDULE_KEYS

    cfg = compose_train([], tmp_path)
    missing = object()
    assert [key for key in SCHEDULE_KEYS if OmegaConf.select(cfg, key, default=missing) is missing] == []


def test_a_restored_position_skips_the_batches_served_in_that_epoch_only():
    from resnet_onecycle.data import Batches

    images = torch.arange(100).view(100, 1)
    batches = Batches(images, torch.zeros(100), 16, True, seed=3)
    full = [x for x, _ in batches]
    assert batches.position() == {"epoch": 0, "batches_done": 7}
    batches.resume_at = (0, 5)  # a checkpoint saved after 5 batches of epoch 0
    resumed = [x for x, _ in batches]
    assert len(resumed) == 2 and all(torch.equal(a, b) for a, b in zip(resumed, full[5:]))
    assert batches.position() == {"epoch": 0, "batches_done": 7}
    batches.resume_at = (0, 5)
    batches.set_epoch(1)  # a position saved in another epoch is not this one's
    assert len(list(batches)) == 7
