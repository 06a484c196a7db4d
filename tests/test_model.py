"""The network against the original's torchsummary table, row for row."""

import pytest
import torch
from torch import nn

from resnet_onecycle.models import MixedResNet

# The original's table: (layer type, output shape without the batch, parameters), in torchsummary's order.
SEED_SUMMARY = [
    ('Conv2d', (64, 32, 32), 1728),
    ('BatchNorm2d', (64, 32, 32), 128),
    ('ReLU', (64, 32, 32), 0),
    ('Conv2d', (128, 32, 32), 73728),
    ('MaxPool2d', (128, 16, 16), 0),
    ('BatchNorm2d', (128, 16, 16), 256),
    ('ReLU', (128, 16, 16), 0),
    ('Conv2d', (128, 16, 16), 147456),
    ('BatchNorm2d', (128, 16, 16), 256),
    ('ReLU', (128, 16, 16), 0),
    ('Conv2d', (128, 16, 16), 147456),
    ('BatchNorm2d', (128, 16, 16), 256),
    ('ReLU', (128, 16, 16), 0),
    ('BasicBlock', (128, 16, 16), 0),
    ('Conv2d', (256, 16, 16), 294912),
    ('MaxPool2d', (256, 8, 8), 0),
    ('BatchNorm2d', (256, 8, 8), 512),
    ('ReLU', (256, 8, 8), 0),
    ('BasicBlock', (256, 8, 8), 0),
    ('Conv2d', (512, 8, 8), 1179648),
    ('MaxPool2d', (512, 4, 4), 0),
    ('BatchNorm2d', (512, 4, 4), 1024),
    ('ReLU', (512, 4, 4), 0),
    ('Conv2d', (512, 4, 4), 2359296),
    ('BatchNorm2d', (512, 4, 4), 1024),
    ('ReLU', (512, 4, 4), 0),
    ('Conv2d', (512, 4, 4), 2359296),
    ('BatchNorm2d', (512, 4, 4), 1024),
    ('ReLU', (512, 4, 4), 0),
    ('BasicBlock', (512, 4, 4), 0),
    ('Linear', (10,), 5130),]


def summary(net: nn.Module, width: int = 32) -> list[tuple[str, tuple, int]]:
    """torchsummary's rows: every module but containers, in the order their forward finishes,
    with the parameters the module holds itself."""
    rows, hooks = [], []

    def hook(module, inputs, output):
        own = sum(p.numel() for p in module.parameters(recurse=False))
        rows.append((type(module).__name__, tuple(output.shape[1:]), own))

    for module in net.modules():
        if module is not net and not isinstance(module, (nn.Sequential, nn.ModuleList)):
            hooks.append(module.register_forward_hook(hook))
    net.eval()
    with torch.no_grad():
        net(torch.zeros(2, 3, width, width))
    for h in hooks:
        h.remove()
    return rows


def test_width_one_matches_the_seed_table_layer_for_layer():
    net = MixedResNet(width=1.0)
    assert summary(net) == SEED_SUMMARY
    assert sum(p.numel() for p in net.parameters()) == 6_573_130


def test_width_scales_channels_and_keeps_the_layer_structure():
    rows = summary(MixedResNet(width=0.25))
    assert [r[0] for r in rows] == [r[0] for r in SEED_SUMMARY]
    assert [r[1][1:] for r in rows] == [r[1][1:] for r in SEED_SUMMARY]  # same spatial sizes
    assert [r[1][0] for r in rows] == [max(1, round(r[1][0] / 4)) if r[0] != "Linear" else 10 for r in SEED_SUMMARY]
    assert MixedResNet(width=0.25)(torch.zeros(3, 3, 32, 32)).shape == (3, 10)


@pytest.mark.parametrize("width", [0, -1.0])
def test_non_positive_width_is_refused_with_the_key(width):
    with pytest.raises(ValueError, match=r"model\.net\.width"):
        MixedResNet(width=width)


@pytest.mark.parametrize("setting, device, mode", [
    (True, "cpu", "default"), (True, "cuda", "reduce-overhead"), ("default", "cuda", "default"),
    ("reduce-overhead", "cpu", "reduce-overhead"), ("max-autotune-no-cudagraphs", "cuda", "max-autotune-no-cudagraphs"),
    ("cudagraphs", "cuda", "backend=cudagraphs")])
def test_model_compile_passes_its_mode_to_torch_compile_with_static_shapes_once(monkeypatch, setting, device, mode):
    from functools import partial
    from types import SimpleNamespace

    from resnet_onecycle.module import MixedResNetModule

    calls = []
    def recording_compile(fn, mode=None, dynamic=None, backend="inductor"):
        calls.append((mode if backend == "inductor" else f"backend={backend}", dynamic))
        return fn

    monkeypatch.setattr(torch, "compile", recording_compile)
    monkeypatch.setattr(torch.compiler, "reset", lambda: calls.append("reset"))
    module = MixedResNetModule(MixedResNet(width=0.0625), partial(torch.optim.SGD, lr=0.1), None, compile=setting)
    module._trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))  # where it will run
    module.setup("fit")
    module.setup("test")  # compiled once per module, after clearing graphs an earlier module left
    assert calls == ["reset", (mode, False)]
    MixedResNetModule(MixedResNet(width=0.0625), None, None, compile=False).setup("fit")
    assert len(calls) == 2


def test_steps_run_the_compiled_net_and_the_summary_and_graph_the_plain_one(monkeypatch, tmp_path):
    """The model summary's and TensorBoard graph's 2-image example input must not reach the
    compiled net: as its first input it made torch.compile build the training graph for any batch
    size. Training, validation and test batches all must."""
    from hydra.utils import instantiate

    from conftest import compose_train, write_image_tree
    from resnet_onecycle.tasks import instantiate_group

    seen = []

    def recording_compile(fn, mode=None, dynamic=None):
        def run(images):
            seen.append(len(images))
            return fn(images)
        return run

    monkeypatch.setattr(torch, "compile", recording_compile)
    tree = write_image_tree(tmp_path / "data", n_train=5, n_test=3)  # 50 training images, 30 test
    cfg = compose_train(["debug=fast", f"data.source={tree}", f"paths.data_dir={tmp_path / 'cache'}", "data.subset=null",
                         "data.test_subset=null", "data.batch_size=16", "trainer.max_epochs=1", "model.scheduler.peak_epoch=0.5",
                         "model.compile=true", "logger.tensorboard.log_graph=true"],
                        tmp_path)
    assert cfg.logger.tensorboard.log_graph  # the graph is traced from the example input
    trainer = instantiate(cfg.trainer, logger=instantiate_group(cfg.logger), enable_checkpointing=False)
    module = instantiate(cfg.model)
    trainer.fit(module, datamodule=instantiate(cfg.data))
    trainer.test(module, datamodule=trainer.datamodule, verbose=False)
    # 50 training images, validation and test of the 30 test images: never the 2 examples
    assert seen == [16, 16, 16, 2] + [16, 14] + [16, 14]


def test_unknown_compile_mode_is_refused_when_the_model_is_built():
    from resnet_onecycle.errors import ConfigError
    from resnet_onecycle.module import MixedResNetModule

    with pytest.raises(ConfigError, match=r"model\.compile='fast'.*reduce-overhead"):
        MixedResNetModule(MixedResNet(width=0.0625), None, None, compile="fast")


def test_epoch_stats_match_torchmetrics_mean_loss_and_micro_accuracy():
    from torchmetrics import MeanMetric
    from torchmetrics.classification import MulticlassAccuracy

    from resnet_onecycle.module import EpochStats

    stats, accuracy, mean_loss = EpochStats(), MulticlassAccuracy(10, average="micro"), MeanMetric()
    generator = torch.Generator().manual_seed(0)
    for epoch in range(2):  # the second epoch after a reset: nothing of the first may remain
        for n in (64, 64, 17):  # a short last batch weighs by its size
            logits = torch.randn(n, 10, generator=generator)
            labels = torch.randint(0, 10, (n,), generator=generator)
            labels[: n // 2] = logits[: n // 2].argmax(-1)  # accuracy well away from chance
            loss = nn.functional.cross_entropy(logits, labels)
            stats.update(logits, labels, loss)
            accuracy.update(logits, labels)
            mean_loss.update(loss, weight=n)
        values = stats.compute()
        torch.testing.assert_close(values["acc"], accuracy.compute())
        torch.testing.assert_close(values["loss"], mean_loss.compute())
        for metric in (stats, accuracy, mean_loss):
            metric.reset()
    # an epoch without a step (a run resumed at its very end) reads as nan, not as an error
    with pytest.warns(UserWarning, match="before the ``update``"):
        empty = stats.compute()
    assert empty["loss"].isnan() and empty["acc"].isnan()
