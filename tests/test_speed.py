"""What keeps the training step fast, checked by behaviour (the timings are in benchmarks/).

On a GPU, an op that needs a value on the host (`.item()`, `float(t)`, `bool(t)`, `nonzero`,
`bincount`, boolean-mask indexing...) makes the host wait for every queued kernel. Here the ops
each training step dispatches are recorded on the CPU, from the previous step's end to this
step's end: the batch fetch and augmentation, every hook, forward, backward, SGD and logging.
"""

from collections import Counter

import lightning as L
import torch
from hydra.utils import instantiate
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import compose_train, write_image_tree
from resnet_onecycle.tasks import instantiate_group

# aten ops whose CUDA kernels copy a value to the host and wait for it, and `lift_fresh`: a tensor
# made from host values (`torch.tensor(x, device=...)`), on a GPU a copy from host memory that waits
SYNCING = {"aten::_local_scalar_dense", "aten::nonzero", "aten::bincount", "aten::_unique", "aten::_unique2",
           "aten::unique_dim", "aten::unique_consecutive", "aten::masked_select", "aten::lift_fresh"}


class OpRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket._qualified_op_name] += 1  # "aten::randint", any overload
        return func(*args, **(kwargs or {}))


class StepOps(L.Callback):
    """The ops of each training step's span. Validation and the epoch's end are left out: they
    read the epoch's metrics back once per epoch, by design."""

    def __init__(self) -> None:
        self.steps: list[Counter] = []
        self.recorder: OpRecorder | None = None

    def start(self) -> None:
        self.recorder = OpRecorder()
        self.recorder.__enter__()

    def stop(self) -> Counter:
        self.recorder.__exit__(None, None, None)
        ops, self.recorder = self.recorder.ops, None
        return ops

    def on_train_epoch_start(self, trainer, module) -> None:
        self.start()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.steps.append(self.stop())
        self.start()

    def on_validation_start(self, trainer, module) -> None:
        if self.recorder is not None:
            self.stop()


def test_the_recorder_sees_a_host_sync():
    with OpRecorder() as recorder:
        torch.ones(3).sum().item()
        bool(torch.ones(1) > 0)
        torch.tensor(0.1, device="cpu")
    assert recorder.ops["aten::_local_scalar_dense"] == 2 and recorder.ops["aten::lift_fresh"] == 1


def test_training_steps_never_wait_on_the_host(tmp_path):
    tree = write_image_tree(tmp_path / "data", n_train=52, n_test=26)
    # the shipped callbacks and logger, logging every step: a logged value read back would show
    cfg = compose_train(["debug=fast", f"data.source={tree}", f"paths.data_dir={tmp_path / 'cache'}"], tmp_path)
    spy = StepOps()  # first, so that its step ends before the other callbacks' step-end hooks
    trainer = instantiate(cfg.trainer, callbacks=[spy, *instantiate_group(cfg.callbacks)],
                          logger=instantiate_group(cfg.logger))
    trainer.fit(instantiate(cfg.model), datamodule=instantiate(cfg.data))
    assert len(spy.steps) == 16  # 2 epochs of 8 steps
    for step, ops in enumerate(spy.steps):
        assert ops["aten::convolution_backward"] > 0 and ops["aten::randint"] > 0  # the whole step was seen
        assert not {op: n for op, n in ops.items() if op in SYNCING}, f"step {step} waits on the host"


def test_the_epoch_metrics_cost_a_step_two_kernels():
    """A training step's share of the epoch's loss and accuracy: argmax and == (views launch
    nothing); summing waits for the epoch's end. On a GPU each kernel is a launch paid in host time."""
    from resnet_onecycle.models import MixedResNet
    from resnet_onecycle.module import MixedResNetModule

    module = MixedResNetModule(MixedResNet(width=0.0625), None, None)
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    with OpRecorder() as net_and_loss:
        torch.nn.functional.cross_entropy(module.logits(images), labels)
    with OpRecorder() as step:
        module.step((images, labels), "train")
    extra = step.ops - net_and_loss.ops
    assert {op: n for op, n in extra.items() if op not in {"aten::detach", "aten::expand"}} == \
        {"aten::argmax": 1, "aten::eq": 1}
    assert module.stats["train_stats"].compute()["acc"].isfinite()
