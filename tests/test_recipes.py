"""The recipe knobs (logit scale, label smoothing, TTA, weight averaging, a one-cycle to zero) and
the named recipes that use them."""

import json

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_resume import SMALL, final_weights, run
from test_schedule import trajectory

from conftest import compose_train
from resnet_onecycle.errors import ConfigError
from resnet_onecycle.models import MixedResNet
from resnet_onecycle.module import MixedResNetModule
from resnet_onecycle.tasks import train


def module(tmp_path, *overrides) -> MixedResNetModule:
    cfg = compose_train(["model.net.width=0.125", *overrides], tmp_path)
    return instantiate(cfg.model)


def test_logit_scale_scales_the_logits_and_adds_no_parameters():
    torch.manual_seed(0)
    plain = MixedResNet(width=0.125).eval()
    scaled = MixedResNet(width=0.125, logit_scale=0.125).eval()
    scaled.load_state_dict(plain.state_dict())  # loads strictly: the same parameters and buffers
    assert sum(p.numel() for p in scaled.parameters()) == sum(p.numel() for p in plain.parameters())
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(scaled(x), plain(x) * 0.125, atol=1e-6)
    assert sum(p.numel() for p in MixedResNet(width=1.0, logit_scale=0.125).parameters()) == 6_573_130


@pytest.mark.parametrize("value", [0, -1, "big", True])
def test_bad_logit_scale_names_the_key(value):
    with pytest.raises(ConfigError, match="model.net.logit_scale"):
        MixedResNet(width=0.125, logit_scale=value)


def test_flip_tta_gives_a_mirrored_image_the_same_logits(tmp_path):
    torch.manual_seed(0)
    net = module(tmp_path, "model.tta=flip").eval()
    x = torch.randn(3, 3, 32, 32)
    averaged, mirrored = net.logits(x), net.logits(x.flip(-1))
    assert torch.allclose(averaged, mirrored, atol=1e-5)
    assert not torch.allclose(net.net(x), net.net(x.flip(-1)), atol=1e-3)  # the plain net differs
    assert torch.allclose(averaged, (net.net(x) + net.net(x.flip(-1))) / 2, atol=1e-5)
    assert torch.allclose(net.classifier(x), averaged, atol=1e-5)  # what the analysis predicts with
    net.train()
    assert torch.allclose(net.logits(x), net.net(x), atol=1e-5)  # training steps see one view


def test_label_smoothing_changes_the_training_loss_only(tmp_path):
    torch.manual_seed(0)
    plain, smoothed = module(tmp_path), module(tmp_path, "model.label_smoothing=0.2")
    smoothed.load_state_dict(plain.state_dict())
    batch = (torch.randn(8, 3, 32, 32), torch.arange(8) % 10)
    plain.train(), smoothed.train()
    assert smoothed.step(batch, "train").item() != pytest.approx(plain.step(batch, "train").item(), abs=1e-4)
    plain.eval(), smoothed.eval()
    assert smoothed.step(batch, "val").item() == pytest.approx(plain.step(batch, "val").item(), abs=1e-6)


@pytest.mark.parametrize("override, key", [("model.label_smoothing=1.5", "model.label_smoothing"),
                                           ("model.tta=rotate", "model.tta")])
def test_bad_knob_values_name_the_key(tmp_path, override, key):
    with pytest.raises(Exception, match=key.replace(".", r"\.")):
        module(tmp_path, override)


def lr_trajectory(tmp_path, *overrides) -> tuple[list[float], int]:
    cfg = compose_train(list(overrides), tmp_path)
    s = cfg.model.scheduler
    return trajectory(cfg.trainer.max_epochs, max_lr=s.max_lr, peak_epoch=s.peak_epoch, div_factor=s.div_factor,
                      end_lr=s.end_lr, anneal_strategy=s.anneal_strategy), cfg.trainer.max_epochs


def test_seed_recipe_keeps_its_lr_trajectory_and_size(tmp_path):
    lrs, epochs = lr_trajectory(tmp_path, "experiment=original")
    assert epochs == 40 and len(lrs) == 40 * 98
    assert lrs[0] == pytest.approx(0.002) and lrs[5 * 98 - 1] == pytest.approx(0.02) and max(lrs) == pytest.approx(0.02)
    assert lrs[-1] == pytest.approx(0.002, rel=1e-3)
    cfg = compose_train(["experiment=original"], tmp_path)
    assert cfg.model.net.logit_scale == 1.0 and cfg.model.label_smoothing == 0.0 and cfg.model.tta == "none"
    assert cfg.callbacks.get("ema") is None and cfg.callbacks.get("lookahead") is None
    assert cfg.data.flip is True and cfg.data.crop_padding == 4 and cfg.data.cutout_size == 8  # no trick is on
    assert not cfg.model.freeze_bn_weights and cfg.model.bn_bias_lr_scale == 1
    assert sum(p.numel() for p in instantiate(cfg.model.net).parameters()) == 6_573_130


def test_fast_recipe_runs_from_near_zero_to_0_4_and_back_to_zero(tmp_path):
    lrs, epochs = lr_trajectory(tmp_path, "experiment=fast")
    assert epochs == 24
    assert lrs[0] == pytest.approx(4e-5) and lrs[5 * 98 - 1] == pytest.approx(0.4) and max(lrs) == pytest.approx(0.4)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12) and lrs[-2] == pytest.approx(0.4 / (19 * 98), rel=1e-3)
    cfg = compose_train(["experiment=fast"], tmp_path)
    assert cfg.model.net.logit_scale == 0.125 and cfg.model.optimizer.nesterov


@pytest.mark.parametrize("recipe", ["original", "cpu_quick", "cpu_fast", "fast", "fast_best", "fast_15s"])
def test_named_recipes_compose_and_run(tmp_path, image_tree, recipe):
    cfg = compose_train([f"experiment={recipe}", "debug=fast", f"data.source={image_tree}",
                         f"paths.data_dir={tmp_path / 'cache'}", "data.subset=null", "data.test_subset=null",
                         "data.batch_size=8", "analysis.enabled=false"], tmp_path)
    summary = train(cfg)
    assert summary["status"] == "completed" and summary["global_steps"] == 2 * 8
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["tta"] == cfg.model.tta and metrics["averaged_weights"] == ("ema" in cfg.callbacks)


def test_weight_averaging_tests_the_average_and_survives_a_resume(tmp_path, image_tree):
    ema = ["callbacks=ema", "callbacks.ema.decay=0.7", "test_ckpt=best"]
    reference, ref_dir = run(tmp_path, "a", image_tree, *ema)
    checkpoint = torch.load(ref_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    averaged, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert averaged.keys() == raw.keys()
    assert any(not torch.equal(averaged[k], raw[k]) for k in averaged if averaged[k].is_floating_point())
    assert json.loads((ref_dir / "metrics.json").read_text())["averaged_weights"] is True

    # The final test ran on the averaged weights: the best checkpoint's average gives its loss again.
    best = next(p for p in (ref_dir / "checkpoints").iterdir() if p.name.startswith("epoch"))
    cfg = compose_train([*SMALL, f"data.source={image_tree}", f"paths.data_dir={tmp_path / 'cache'}"], tmp_path / "x")
    datamodule, net = instantiate(cfg.data), instantiate(cfg.model)
    net.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])
    datamodule.setup("test")
    images, labels = datamodule.splits["test"]
    net.eval()
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(net(datamodule.on_after_batch_transfer((images, labels), 0)[0]), labels)
    assert loss.item() == pytest.approx(reference["test/loss"], rel=1e-4)

    # Interrupted mid-epoch 1 and resumed: the same average, and the same raw weights, at the end.
    sigterm = {"_target_": "test_resume.SendSignal", "at_step": 10}
    stopped, run_dir = run(tmp_path, "b", image_tree, *ema, extra_callbacks=[sigterm])
    assert stopped["status"] == "interrupted"
    resumed, _ = run(tmp_path, "b", image_tree, *ema, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert resumed["status"] == "completed" and resumed["global_steps"] == 24
    again = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    for key in averaged:
        assert torch.equal(again["state_dict"][key], averaged[key]), key
        assert torch.equal(again["current_model_state"][key], raw[key]), key
    assert resumed["test/loss"] == reference["test/loss"]


class CrashAtEpochStart(L.Callback):
    """Raises at the start of epoch `epoch`, as a crash between two epochs would stop the run."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, *args) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("crash")


@pytest.mark.slow
def test_fast_best_validates_once_yet_resumes_exactly_from_an_epoch_that_did_not_validate(tmp_path, image_tree):
    recipe = ["experiment=fast_best", "model.scheduler.peak_epoch=1"]
    reference, ref_dir = run(tmp_path, "a", image_tree, *recipe, "analysis.enabled=true")
    events = EventAccumulator(str(ref_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/acc")] == [23]  # once, after the last of 24 steps
    assert "| validation | the test split, after the last epoch only |" in (ref_dir / "report.md").read_text()
    assert sorted(p.name for p in (ref_dir / "checkpoints").iterdir()) == ["epoch002.ckpt", "last.ckpt"]

    with pytest.raises(RuntimeError, match="crash"):
        run(tmp_path, "b", image_tree, *recipe, "callbacks.last_checkpoint.every_s=0",
            extra_callbacks=[{"_target_": "test_recipes.CrashAtEpochStart", "epoch": 2}])
    last = tmp_path / "b" / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 16  # epoch 1's end, which did not validate
    resumed, run_dir = run(tmp_path, "b", image_tree, *recipe, f"ckpt_path={last}")
    assert resumed["global_steps"] == 24 and resumed["test/acc"] == reference["test/acc"]
    assert resumed["test/loss"] == reference["test/loss"]
    weights, reference_weights = final_weights(run_dir), final_weights(ref_dir)
    assert all(torch.equal(weights[k], reference_weights[k]) for k in reference_weights)
