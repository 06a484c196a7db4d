"""Real CIFAR-10 images (the offline JPEG copy): a small net learns far above chance in 2 epochs."""

import json

import pytest

from conftest import compose_train
from resnet_onecycle.tasks import train


@pytest.mark.integration
@pytest.mark.slow
def test_width_quarter_learns_real_cifar10_in_two_epochs(offline_copy, tmp_path):
    cfg = compose_train(
        [f"data.source={offline_copy}", f"paths.data_dir={tmp_path / 'cache'}",
         "model.net.width=0.25", "trainer.max_epochs=2", "trainer.accelerator=cpu",
         "data.subset=8192", "data.test_subset=2000", "data.batch_size=128",
         "model.scheduler.peak_epoch=1", "model.scheduler.max_lr=0.05", "callbacks.progress_bar.refresh_rate=0"],
        tmp_path,
    )
    summary = train(cfg)
    assert summary["train_images"] == 8192 and summary["test_images"] == 2000
    assert summary["global_steps"] == 2 * 64
    assert summary["test/acc"] > 0.35, summary  # chance is 0.10
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test/acc"] == summary["test/acc"]
