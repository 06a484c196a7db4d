"""The tricks that keep the network as it is (docs/recipes.md, "Tricks"): alternating flip,
translation, multi-view TTA, lookahead, frozen BN scales with a larger BN-bias LR. Each is off by
default and does what it says."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from test_recipes import module
from test_resume import final_weights, run

from conftest import compose_train
from resnet_onecycle.callbacks import Lookahead
from resnet_onecycle.data.augment import augment, normalize
from resnet_onecycle.data.cifar10 import Batches, CIFAR10DataModule
from resnet_onecycle.errors import ConfigError
from resnet_onecycle.models import MixedResNet, with_tta


def flips_by_epoch(epochs: int, n: int = 200) -> torch.Tensor:
    """(epochs, n): whether image i was mirrored in each epoch, read from the batches."""
    batches = Batches(torch.zeros(n, 3, 32, 32, dtype=torch.uint8), torch.arange(n), 32, shuffle=True, seed=7,
                      alternate_flip=True)
    table = torch.zeros(epochs, n, dtype=torch.long)
    for epoch in range(epochs):
        batches.set_epoch(epoch)
        for _, index, flipped in batches:
            table[epoch, index] = flipped
    return table


def test_alternating_flip_mirrors_each_image_in_exactly_half_the_epochs():
    table = flips_by_epoch(6)
    assert (table.sum(0) == 3).all()  # every image, 3 epochs of 6
    assert (table[1:] != table[:-1]).all()  # the other way each epoch
    assert 0.4 < table[0].float().mean() < 0.6  # at random in the first epoch
    assert torch.equal(table, flips_by_epoch(6))  # from the seed alone: a resumed run sees the same


def test_alternating_flip_mirrors_the_pixels_it_says():
    datamodule = CIFAR10DataModule(crop_padding=0, cutout_size=0, flip="alternate")
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    flipped = torch.tensor([0, 1] * 8)
    out = augment(images, 0, False, 0, "reflect", flipped)
    plain = normalize(images)
    assert torch.equal(out[flipped == 1], plain[flipped == 1].flip(-1))
    assert torch.equal(out[flipped == 0], plain[flipped == 0])
    assert datamodule.hparams.flip == "alternate"


@pytest.mark.parametrize("value", ["sometimes", 1, None])
def test_a_bad_flip_names_the_key_and_the_choices(value):
    with pytest.raises(ConfigError, match=r"data\.flip=.*use true, false, alternate"):
        CIFAR10DataModule(flip=value)


@pytest.mark.parametrize("shift", [1, 2, 3])
def test_translation_moves_every_pixel_by_at_most_the_set_amount(shift):
    """A crop after `shift`-pixel reflect padding is airbench's translation: the interior moves as one."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8)
    out, plain = augment(images, shift, False, 0, "reflect"), normalize(images)
    inner = slice(shift, 32 - shift)
    seen = set()
    for i in range(len(images)):
        moves = [(dy, dx) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1)
                 if torch.equal(out[i, :, inner, inner], plain[i, :, shift + dy:32 - shift + dy, shift + dx:32 - shift + dx])]
        assert len(moves) == 1
        seen.add(moves[0])
    assert len(seen) == (2 * shift + 1) ** 2  # every shift in [-shift, shift]^2 occurs


def test_multi_view_tta_is_the_plain_forward_on_an_image_its_views_leave_alone():
    torch.manual_seed(0)
    net = MixedResNet(width=0.125).eval()
    flat = torch.randn(4, 3, 1, 1).expand(4, 3, 32, 32).contiguous()  # every view of a flat image is itself
    with torch.no_grad():
        assert torch.allclose(with_tta(net, "multi")(flat), net(flat), atol=1e-6)
        x = torch.randn(4, 3, 32, 32)
        assert not torch.allclose(with_tta(net, "multi")(x), net(x), atol=1e-4)


def test_multi_view_tta_averages_the_six_views_as_airbench_does(tmp_path):
    torch.manual_seed(0)
    lightning_module = module(tmp_path, "model.tta=multi").eval()
    net, x = lightning_module.net, torch.randn(3, 3, 32, 32)

    def mirrored(images):
        return (net(images) + net(images.flip(-1))) / 2

    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    expected = mirrored(x) / 2 + (mirrored(padded[..., :32, :32]) + mirrored(padded[..., 2:, 2:])) / 4
    with torch.no_grad():
        assert torch.allclose(lightning_module.logits(x), expected, atol=1e-5)
        assert torch.allclose(lightning_module.classifier(x), expected, atol=1e-5)  # the analysis' view
        lightning_module.train()
        assert torch.allclose(lightning_module.logits(x), net(x), atol=1e-5)  # training sees one view


def test_the_lookahead_pull_moves_the_weights_toward_the_average_by_the_set_factor():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    lookahead = Lookahead()
    lookahead.average = [torch.zeros_like(t) for t in Lookahead.tensors(net)]
    assert len(lookahead.average) == 6  # weight, bias, BN scale and shift, running mean and variance
    before = [t.clone() for t in Lookahead.tensors(net)]
    lookahead.pull(Lookahead.tensors(net), 0.75)
    for weight, average, old in zip(Lookahead.tensors(net), lookahead.average, before):
        assert torch.allclose(average, 0.25 * old)  # 0 + (1 - 0.75) (weights - 0)
        assert torch.equal(weight, average)  # and the weights are set to it


@pytest.mark.parametrize("key, value", [("decay", 1.0), ("decay", -0.1), ("every_n_steps", 0), ("power", -1)])
def test_bad_lookahead_settings_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"callbacks.lookahead.{key}"):
        Lookahead(**{key: value})


class Watch(L.Callback):
    """Records, before each step, how many steps are done and whether the weights equal the lookahead's
    average (in a class list: Hydra builds the instance)."""

    seen: list[tuple[int, bool]] = []

    def on_train_batch_start(self, trainer, module, *args) -> None:
        lookahead = next(c for c in trainer.callbacks if isinstance(c, Lookahead))
        equal = all(torch.equal(a, t) for a, t in zip(lookahead.average, lookahead.tensors(module.net)))
        Watch.seen.append((trainer.global_step, equal))


def test_lookahead_pulls_every_5_steps_ends_on_the_average_and_resumes_exactly(tmp_path, image_tree):
    lookahead = ["callbacks=lookahead"]
    Watch.seen.clear()
    reference, ref_dir = run(tmp_path, "a", image_tree, *lookahead, extra_callbacks=[{"_target_": "test_tricks.Watch"}])
    assert reference["status"] == "completed" and reference["global_steps"] == 24
    assert Watch.seen == [(step, step % 5 == 0) for step in range(24)]
    plain, _ = run(tmp_path, "p", image_tree)
    assert plain["test/loss"] != reference["test/loss"]  # it changed the training
    checkpoint = torch.load(ref_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    state = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("Lookahead"))
    final = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.") and v.is_floating_point()}
    assert len(final) == len(state["average"])
    for (key, weight), average in zip(final.items(), state["average"]):
        assert torch.equal(weight, average), key  # the last step set the weights to the average

    sigterm = {"_target_": "test_resume.SendSignal", "at_step": 10}
    stopped, run_dir = run(tmp_path, "b", image_tree, *lookahead, extra_callbacks=[sigterm])
    assert stopped["status"] == "interrupted"
    resumed, _ = run(tmp_path, "b", image_tree, *lookahead, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert resumed["test/loss"] == reference["test/loss"]
    weights = final_weights(run_dir)
    assert all(torch.equal(weights[k], final[k]) for k in final)


def test_frozen_bn_scales_do_not_change_in_a_step_and_the_biases_train_faster(tmp_path):
    torch.manual_seed(0)
    lightning_module = module(tmp_path, "model.freeze_bn_weights=true", "model.bn_bias_lr_scale=64")
    bn = [m for m in lightning_module.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    groups = lightning_module.parameter_groups()
    optimizer = instantiate(compose_train(["model.net.width=0.125"], tmp_path).model.optimizer)(params=groups)
    weights, biases = optimizer.param_groups
    assert biases["weight_decay"] == pytest.approx(weights["weight_decay"] / 64)
    assert {id(p) for p in biases["params"]} == {id(m.bias) for m in bn}
    assert not any(id(m.weight) in {id(p) for p in weights["params"]} for m in bn)  # frozen: not trained at all
    scales, shifts = [m.weight.clone() for m in bn], [m.bias.clone() for m in bn]
    loss = F.cross_entropy(lightning_module.net(torch.randn(8, 3, 32, 32)), torch.arange(8))
    loss.backward()
    optimizer.step()
    assert all(torch.equal(m.weight, s) for m, s in zip(bn, scales))
    assert all(not torch.equal(m.bias, s) for m, s in zip(bn, shifts))
    assert sum(p.numel() for p in lightning_module.net.parameters()) == sum(
        p.numel() for p in MixedResNet(width=0.125).parameters())  # the same network


def test_the_bn_bias_group_follows_the_one_cycle_at_its_scale(tmp_path, image_tree):
    summary, run_dir = run(tmp_path, "a", image_tree, "model.bn_bias_lr_scale=8")
    assert summary["status"] == "completed"
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    scheduler = checkpoint["lr_schedulers"][0]
    weights_lr, bias_lr = scheduler["_last_lr"]
    assert bias_lr == pytest.approx(8 * weights_lr)
    groups = checkpoint["optimizer_states"][0]["param_groups"]
    assert [g["max_lr"] for g in groups] == pytest.approx([0.1, 0.8])
    assert [g["name"] for g in groups] == ["weights", "bn_biases"]


@pytest.mark.parametrize("override, key", [("model.bn_bias_lr_scale=0", "model.bn_bias_lr_scale"),
                                           ("model.freeze_bn_weights=1", "model.freeze_bn_weights"),
                                           ("model.tta=views", "model.tta")])
def test_bad_trick_settings_name_the_key(tmp_path, override, key):
    with pytest.raises(Exception, match=key.replace(".", r"\.")):
        module(tmp_path, override)


def test_multi_view_tta_exports_to_onnx_and_agrees_with_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    from types import SimpleNamespace

    from resnet_onecycle import onnx_export

    torch.manual_seed(0)
    classifier = SimpleNamespace(classify_net=with_tta(MixedResNet(width=0.0625), "multi").eval())
    onnx_export.export_onnx(classifier, tmp_path / "m.onnx")
    check = onnx_export.compare(classifier, onnx_export.onnx_session(tmp_path / "m.onnx"),
                                torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8))
    assert onnx_export.agrees(check, 1e-5)
