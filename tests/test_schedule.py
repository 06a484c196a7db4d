"""The one-cycle LR trajectory, by steps, and as the Trainer actually steps it."""

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from conftest import compose_train
from resnet_onecycle.schedule import one_cycle


def trajectory(epochs: int, steps_per_epoch: int = 98, **kwargs) -> list[float]:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    total = epochs * steps_per_epoch
    scheduler = one_cycle(optimizer, total_steps=total, steps_per_epoch=steps_per_epoch, **kwargs)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_seed_recipe_trajectory():
    lrs = trajectory(40, max_lr=0.02, peak_epoch=5)
    assert len(lrs) == 40 * 98
    assert lrs[0] == pytest.approx(0.002)
    assert lrs[5 * 98 - 1] == pytest.approx(0.02)  # the last step of epoch 5
    assert max(lrs) == pytest.approx(0.02) and lrs.index(max(lrs)) == 5 * 98 - 1
    assert lrs[-1] == pytest.approx(0.002, rel=1e-3)
    # linear phases: constant increments up, constant decrements down
    up, down = torch.tensor(lrs[:490]).diff(), torch.tensor(lrs[489:]).diff()
    assert torch.allclose(up, up.mean(), rtol=1e-3) and up.mean() > 0
    assert torch.allclose(down, down.mean(), rtol=1e-3) and down.mean() < 0


@pytest.mark.parametrize("epochs", [8, 20, 60])
def test_peak_stays_at_epoch_five_whatever_the_run_length(epochs):
    lrs = trajectory(epochs, max_lr=0.02, peak_epoch=5)
    assert lrs.index(max(lrs)) == 5 * 98 - 1


def test_end_lr_is_a_config_value():
    lrs = trajectory(10, steps_per_epoch=20, max_lr=0.1, peak_epoch=2, end_lr=1e-4)
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[-1] == pytest.approx(1e-4, rel=0.1)
    assert lrs[-1] < lrs[-2]


def test_momentum_left_alone_unless_cycled():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    one_cycle(optimizer, total_steps=100, steps_per_epoch=10, max_lr=0.1, peak_epoch=2)
    assert optimizer.param_groups[0]["momentum"] == 0.9
    one_cycle(optimizer, total_steps=100, steps_per_epoch=10, max_lr=0.1, peak_epoch=2, cycle_momentum=True)
    assert optimizer.param_groups[0]["momentum"] == pytest.approx(0.95)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"max_lr": 0.0}, "max_lr"),
        ({"max_lr": -0.1}, "max_lr"),
        ({"max_lr": 0.1, "peak_epoch": 10}, "peak_epoch"),
        ({"max_lr": 0.1, "peak_epoch": 0}, "peak_epoch"),
        ({"max_lr": 0.1, "end_lr": 0.5}, "end_lr"),
        ({"max_lr": 0.1, "div_factor": 0}, "div_factor"),
    ],
)
def test_impossible_schedules_name_the_key(kwargs, key):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match=rf"model\.scheduler\.{key}"):
        one_cycle(optimizer, total_steps=100, steps_per_epoch=10, **kwargs)


def test_a_warm_up_of_one_step_is_refused_with_the_fix():
    # OneCycleLR divides by the warm-up's steps less one: a warm-up of one step would end in ZeroDivisionError
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match=r"model\.scheduler\.peak_epoch=1 .* warm-up of 1 step.*at least 2.*data\.batch_size"):
        one_cycle(optimizer, total_steps=3, steps_per_epoch=1, max_lr=0.1, peak_epoch=1)
    one_cycle(optimizer, total_steps=6, steps_per_epoch=2, max_lr=0.1, peak_epoch=1)  # two steps: enough


class RecordLR(L.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, *args):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_trainer_steps_the_schedule_once_per_batch_to_the_end(tmp_path, image_tree):
    # 60 training images in batches of 8 -> 8 steps per epoch (the last one partial), 3 epochs.
    cfg = compose_train(
        ["debug=fast", f"data.source={image_tree}", "data.subset=null", "data.test_subset=null",
         "data.batch_size=8", "trainer.max_epochs=3", "model.scheduler.max_lr=0.1"],
        tmp_path,
    )
    record = RecordLR()
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[record])
    trainer.fit(instantiate(cfg.model), datamodule=instantiate(cfg.data))
    assert len(record.lrs) == trainer.global_step == 3 * 8
    assert record.lrs[0] == pytest.approx(0.01)
    assert record.lrs[8 - 1] == pytest.approx(0.1)  # peak at the last step of epoch 1
    assert record.lrs[-1] == pytest.approx(0.01, rel=0.05)


def test_learning_rates_logs_every_group_and_the_momentum_or_first_beta():
    from types import SimpleNamespace

    from resnet_onecycle.callbacks import LearningRates

    w = [torch.zeros(1, requires_grad=True) for _ in range(3)]
    sgd = torch.optim.SGD([{"params": [w[0]], "lr": 0.1}, {"params": [w[1]], "lr": 0.2, "name": "bn_biases"}], momentum=0.9)
    adam = torch.optim.AdamW([w[2]], lr=0.3, betas=(0.8, 0.99))
    logged = []
    logger = SimpleNamespace(log_metrics=lambda stats, step: logged.append((step, stats)))
    trainer = SimpleNamespace(optimizers=[sgd, adam], loggers=[logger], log_every_n_steps=10, global_step=8)
    LearningRates().on_train_batch_start(trainer, None, None, 0)
    assert logged == []  # step 8: not a logging step
    trainer.global_step = 9
    LearningRates().on_train_batch_start(trainer, None, None, 0)
    assert logged == [(9, {"lr-SGD/pg1": 0.1, "lr-SGD/pg1-momentum": 0.9, "lr-SGD/bn_biases": 0.2,
                           "lr-SGD/bn_biases-momentum": 0.9, "lr-AdamW": 0.3, "lr-AdamW-momentum": 0.8})]
