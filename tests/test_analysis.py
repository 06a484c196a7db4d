"""LR range test, pictures, Grad-CAM, report and eval.py, on small synthetic data with tiny models."""

import json
import re
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from conftest import ROOT, class_images, compose_train, write_image_tree
from resnet_onecycle.analysis import Analysis
from resnet_onecycle.analysis.gradcam import gradcam_maps
from resnet_onecycle.analysis.predictions import predict
from resnet_onecycle.data.sources import CLASSES
from resnet_onecycle.errors import ConfigError
from resnet_onecycle.lr_find import range_test_module, run_lr_find, suggest
from resnet_onecycle.models import MixedResNet


def script(name, *overrides, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "src" / name), *overrides], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_a_diverging_range_test_suggests_its_lowest_loss():
    lrs = np.logspace(-4, 1, 101)
    # a valley in log10(LR) with its bottom at 0.03, then divergence
    losses = 2.3 - 0.5 * np.exp(-((np.log10(lrs) - np.log10(0.03)) ** 2)) + np.where(lrs > 0.03, 5 * (lrs - 0.03), 0)
    losses[5] = 0.1  # the first steps are skipped: too early to mean anything
    suggestion, method = suggest(lrs, losses)
    assert suggestion == pytest.approx(0.03, rel=0.07) and "lowest" in method
    losses[85:] = np.nan  # diverged points are ignored
    assert suggest(lrs, losses)[0] == pytest.approx(0.03, rel=0.07)
    assert suggest(lrs[:12], losses[:12]) == (None, "too few steps")


def test_a_range_test_that_never_diverges_suggests_its_steepest_fall():
    lrs = np.logspace(-4, 1, 101)
    # falling fastest per decade around 0.2, still falling (slowly) at the top of the range
    losses = 2.3 - 0.3 / (1 + np.exp(-(np.log10(lrs) - np.log10(0.2)) * 4)) - 0.01 * np.log10(lrs)
    suggestion, method = suggest(lrs, losses)
    assert suggestion == pytest.approx(0.2, rel=0.15) and "steepest" in method


def test_smoothing_is_bias_corrected_from_the_first_step():
    from resnet_onecycle.lr_find import smoothed

    assert smoothed([2.0] * 30) == pytest.approx([2.0] * 30)  # a flat loss stays flat
    rising = smoothed(list(np.linspace(1, 3, 50)))
    assert all(b > a for a, b in zip(rising, rising[1:]))


def test_range_test_suggests_a_max_lr_in_range_and_restores_the_weights(tmp_path, learnable_tree):
    cfg = compose_train(["debug=fast", f"data.source={learnable_tree}", f"paths.data_dir={tmp_path}",
                         "data.subset=null", "data.test_subset=null", "data.batch_size=40", "lr_find.num_training=40",
                         "model.scheduler.max_lr=auto"], tmp_path)
    module = range_test_module(cfg)
    module.net.train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    result = run_lr_find(cfg, instantiate(cfg.data), str(tmp_path), module=module)
    assert len(result["lr"]) == len(result["loss"]) >= 20
    assert cfg.lr_find.min_lr <= result["suggested_max_lr"] <= cfg.lr_find.max_lr
    assert (result["suggested_max_lr"], result["method"]) == suggest(result["lr"], result["loss"])
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not list(tmp_path.glob(".lr_find*.ckpt"))  # Lightning's temporary checkpoint is gone


def test_range_test_without_a_suggestion_says_what_to_raise(tmp_path, monkeypatch):
    import resnet_onecycle.lr_find as lr_find

    cfg = compose_train(["debug=fast"], tmp_path)
    too_short = {"lr": [1e-5, 1e-4, 1e-3], "loss": [2.3, 2.2, 9.0], "suggested_max_lr": None}
    monkeypatch.setattr(lr_find, "run_lr_find", lambda *args, **kwargs: too_short)
    with pytest.raises(ConfigError, match=r"stopped after 3 steps.*raise lr_find\.num_training"):
        lr_find.lr_range_test(cfg, None, tmp_path)
    assert (tmp_path / "lr_find.png").is_file()  # the curve is still there to look at


@pytest.fixture(scope="module")
def trained_net():
    """A tiny net given 30 SGD steps on the colour-coded classes: right on some images, wrong on others."""
    from resnet_onecycle.data.augment import normalize

    torch.manual_seed(0)
    net = MixedResNet(width=0.125)
    images, labels = (torch.from_numpy(a) for a in class_images(8, seed=5))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(net(normalize(images)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.zero_grad(set_to_none=True)
    return net


@pytest.fixture
def net_and_data(trained_net):
    images, labels = class_images(4, seed=3)
    return trained_net, torch.from_numpy(images), torch.from_numpy(labels)


def test_gradcam_maps_are_valid_and_leave_the_model_as_found(net_and_data):
    net, images, labels = net_and_data
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    predicted = predict(net, images, labels, torch.device("cpu")).predicted
    maps = gradcam_maps(net, images[:12], predicted[:12].tolist(), "layer2", torch.device("cpu"), batch_size=5)
    assert maps.shape == (12, 32, 32)
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert all(m.std() > 0 for m in maps)  # not constant
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BN statistics too
    assert all(p.grad is None for p in net.parameters())
    with pytest.raises(ConfigError, match=r"analysis\.gradcam_layer='layer9'"):
        gradcam_maps(net, images[:2], [0, 1], "layer9", torch.device("cpu"))


def test_the_analysis_callback_writes_pictures_and_report_after_testing(tmp_path, trained_net):
    tree = write_image_tree(tmp_path / "data", n_train=2, n_test=4, seed=2)
    cfg = compose_train(["debug=fast", f"data.source={tree}", f"paths.data_dir={tmp_path / 'cache'}",
                         "data.subset=null", "data.test_subset=null"], tmp_path)
    module = instantiate(cfg.model, net=trained_net)
    out = tmp_path / "out"
    analysis = Analysis(out, misclassified=7, title="A report")
    trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=[analysis], enable_progress_bar=False,
                        enable_model_summary=False, max_epochs=3)
    trainer.test(module, datamodule=instantiate(cfg.data))
    for name, min_width in (("misclassified.png", 600), ("gradcam.png", 600), ("confusion_matrix.png", 500)):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] >= min_width and image.size[1] >= 300
    assert not (out / "curves.png").exists()  # no training events to draw
    images, labels = trainer.datamodule.splits["test"]
    predictions = predict(trained_net, images, labels, torch.device("cpu"))
    assert 0 < (predictions.predicted != predictions.labels).sum()  # there are mistakes to show
    report = (out / "report.md").read_text()
    assert report.startswith("# A report") and "| test/acc |" in report
    # the recipe as it ran: the module's net and partials, the DataModule, the trainer
    assert "MixedResNet, width 0.125, 103,954 parameters" in report and "| batch size / epochs | 64 / 3 |" in report
    assert "0.002 -> 0.02 at the end of epoch 1 -> 0.002" in report
    for link in re.findall(r"\]\(([^)]+)\)", report):
        assert (out / link).is_file() and "/" not in link  # relative links next to the report
    per_class = json.loads((out / "per_class_accuracy.json").read_text())
    assert list(per_class) == list(CLASSES) and analysis.per_class_accuracy == per_class
    matrix_total = sum(predictions.predicted == predictions.labels)
    assert sum(per_class[c] * 4 for c in CLASSES) == pytest.approx(float(matrix_total))


def test_misclassified_titles_match_the_predictions(tmp_path, net_and_data):
    from resnet_onecycle.analysis.misclassified import most_confident_mistakes, plot_misclassified

    net, images, labels = net_and_data
    predictions = predict(net, images, labels, torch.device("cpu"))
    index = most_confident_mistakes(predictions, 20)
    fig = plot_misclassified(images, predictions, index, CLASSES)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [f"{CLASSES[int(labels[i])]} / {CLASSES[int(predictions.predicted[i])]}" for i in index]
    assert all(t.split(" / ")[0] != t.split(" / ")[1] for t in titles)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trained")
    tree = write_image_tree(tmp / "data", n_train=52, n_test=26)
    result = script("train.py", "debug=fast", f"data.source={tree}", f"paths.log_dir={tmp / 'logs'}",
                    f"paths.data_dir={tmp / 'cache'}", "model.scheduler.max_lr=auto")
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp / "logs" / "train" / "runs").iterdir()
    return tmp, tree, run_dir, result.stdout + result.stderr


@pytest.mark.slow
def test_training_run_writes_lr_find_pictures_and_report(trained_run):
    _, _, run_dir, _console = trained_run
    for name in ("lr_find.png", "curves.png", "misclassified.png", "gradcam.png", "confusion_matrix.png", "report.md"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    found = json.loads((run_dir / "lr_find.json").read_text())
    assert metrics["lr_find"]["suggested_max_lr"] == found["suggested_max_lr"]
    hparams = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "max_lr: auto" in hparams  # what was asked; the hparams and report hold what was used
    report = (run_dir / "report.md").read_text()
    assert f"{found['suggested_max_lr']:.4g}" in report
    assert set(metrics["per_class_accuracy"]) == set(CLASSES)
    assert "subset of 256 test images" in report  # debug=fast tests on data.test_subset=256


@pytest.mark.slow
def test_the_curves_lr_is_the_schedule_at_every_step(trained_run):
    from resnet_onecycle.analysis.curves import read_scalars, schedule_lrs, steps_per_epoch_of

    _, _, run_dir, _console = trained_run
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    cfg.model.scheduler.max_lr = json.loads((run_dir / "lr_find.json").read_text())["suggested_max_lr"]
    scalars = read_scalars(run_dir / "tensorboard")
    lrs = schedule_lrs(instantiate(cfg.model.scheduler), cfg.trainer.max_epochs, steps_per_epoch_of(scalars))
    assert len(lrs) == metrics_steps(run_dir) == 16  # debug=fast: 2 epochs of 8 steps, every one drawn
    logged = scalars["lr-SGD"]  # the samples TensorBoard holds agree with the schedule drawn
    assert logged and all(lrs[step] == pytest.approx(value, rel=1e-6) for step, value in logged)
    assert max(lrs) == pytest.approx(cfg.model.scheduler.max_lr) and lrs.index(max(lrs)) == 7  # peak at epoch 1's end


def test_the_curves_put_each_point_at_the_epoch_it_was_logged_in():
    from resnet_onecycle.analysis.curves import plot_curves

    train = [(7, 2.0), (15, 1.5), (23, 1.0)]  # 3 epochs of 8 steps, validated once, after the last
    fig = plot_curves({"train/loss": train, "train/acc": train, "val/loss": [(23, 1.2)], "val/acc": [(23, 0.6)]},
                      val_is_test=True, schedule=[0.1] * 24)
    for ax in fig.axes[:2]:
        assert [list(line.get_xdata()) for line in ax.lines] == [[1, 2, 3], [3]]


def metrics_steps(run_dir) -> int:
    return json.loads((run_dir / "metrics.json").read_text())["global_steps"]


@pytest.mark.slow
def test_eval_reproduces_the_training_runs_test_accuracy(trained_run):
    tmp, _, run_dir, _console = trained_run
    result = script("eval.py", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"paths.log_dir={tmp / 'logs'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Decoding" not in result.stdout + result.stderr  # the run's own data dir and cache, not ./data
    (eval_dir,) = (tmp / "logs" / "eval" / "runs").iterdir()
    trained = json.loads((run_dir / "metrics.json").read_text())
    evaluated = json.loads((eval_dir / "metrics.json").read_text())
    assert evaluated["test/acc"] == trained["test/acc"]
    assert evaluated["test/loss"] == pytest.approx(trained["test/loss"], rel=1e-5)
    for name in ("curves.png", "misclassified.png", "gradcam.png", "confusion_matrix.png", "report.md"):
        assert (eval_dir / name).is_file(), name
    # the recipe the checkpoint was trained with (debug=fast: 2 epochs), not eval.yaml's defaults
    assert "| batch size / epochs | 64 / 2 |" in (eval_dir / "report.md").read_text()
    assert "| validation | the test split, every epoch |" in (eval_dir / "report.md").read_text()
    saved = OmegaConf.load(eval_dir / ".hydra" / "config.yaml")
    assert saved.trainer.max_epochs == 2 and saved.data.batch_size == 64 and saved.model.net.width == 0.125


@pytest.mark.slow
def test_a_training_runs_console_holds_no_third_party_noise(trained_run):
    *_, console = trained_run
    for noise in ("💡 Tip", "litlogger", "LeafSpec", "torch.jit", "FutureWarning", "DeprecationWarning",
                  "weights_only", ".lr_find_", "smaller than the logging interval", "site-packages", "1 images"):
        assert noise not in console, noise
    assert "test/acc" in console and "About " in console  # the project's own result line, and the estimate


@pytest.mark.slow
def test_eval_refuses_a_missing_or_foreign_checkpoint(trained_run, tmp_path):
    from hydra import compose, initialize_config_dir

    from conftest import CONFIGS
    from resnet_onecycle.tasks import evaluate

    tmp, tree, run_dir, _console = trained_run

    def eval_config(*overrides):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            return compose("eval", overrides=[f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}/run",
                                              "debug=fast", f"data.source={tree}", *overrides])

    with pytest.raises(ConfigError, match=r"give ckpt_path=<run>/checkpoints/last\.ckpt"):
        evaluate(eval_config())
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        evaluate(eval_config(f"ckpt_path={tmp_path / 'nope.ckpt'}"))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="junk.ckpt cannot be read as a checkpoint .*not a checkpoint of this project"):
        evaluate(eval_config(f"ckpt_path={junk}", f"paths.data_dir={tmp / 'cache'}"))
    other = script("eval.py", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "model.net.width=0.25",
                   f"paths.log_dir={tmp_path}", f"paths.data_dir={tmp_path / 'cache'}")
    assert other.returncode == 2 and "holds a MixedResNet of width 0.125" in other.stderr
    assert "this config builds width 0.25: give model.net.width=0.125" in other.stderr and "Traceback" not in other.stderr


@pytest.mark.slow
def test_find_lr_script_prints_the_override(trained_run, tmp_path):
    _, tree, _, _console = trained_run
    result = script("find_lr.py", "debug=fast", f"data.source={tree}", f"paths.log_dir={tmp_path}",
                    f"paths.data_dir={tmp_path / 'cache'}")
    assert result.returncode == 0, result.stderr[-3000:]
    suggested = float(re.search(r"model\.scheduler\.max_lr=([0-9.e-]+)", result.stdout).group(1))
    (run_dir,) = (tmp_path / "find_lr" / "runs").iterdir()
    found = json.loads((run_dir / "lr_find.json").read_text())
    assert suggested == pytest.approx(found["suggested_max_lr"], rel=1e-3)
    with Image.open(run_dir / "lr_find.png") as image:
        assert image.size[0] >= 600
