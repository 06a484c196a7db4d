"""The LightningModule: cross-entropy, SGD and the one-cycle LR stepped every batch."""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric, Metric
from torchmetrics.utilities import dim_zero_cat

from resnet_onecycle.compile_cache import guarded
from resnet_onecycle.errors import ConfigError, check
from resnet_onecycle.models import TTA_MODES, views_averaged, with_tta

# torch.compile's modes, and `cudagraphs`, its backend of that name: CUDA graphs of the eager
# kernels, a third of inductor's start-up (benchmarks/RESULTS.md)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", "cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune", "cudagraphs")  # those that capture CUDA graphs


def compile_mode(setting: bool | str, device_type: str = "cpu") -> str | None:
    """The torch.compile mode `model.compile` asks for on this device type, or None. `true` is the
    mode measured fastest: `reduce-overhead` (CUDA graphs) on a GPU, `default` elsewhere
    (benchmarks/RESULTS.md)."""
    if setting is True:
        return "reduce-overhead" if device_type == "cuda" else "default"
    if setting is False:
        return None
    if setting in COMPILE_MODES:
        return setting
    raise ConfigError(f"model.compile={setting!r}: use false, true (reduce-overhead on a GPU, default elsewhere) "
                      "or a mode: " + ", ".join(COMPILE_MODES) + ".")


def compiled(fn: Callable, setting: bool | str, device_type: str) -> Callable:
    """`fn` through torch.compile with static shapes: a graph per batch size (a full batch, an
    epoch's last), what CUDA graphs capture, rather than one for any size."""
    mode = compile_mode(setting, device_type)
    if mode == "cudagraphs":
        return guarded(torch.compile(fn, backend="cudagraphs", dynamic=False))
    return guarded(torch.compile(fn, mode=mode, dynamic=False))


def batch_norms(net: nn.Module) -> list[nn.Module]:
    return [layer for layer in net.modules() if isinstance(layer, nn.modules.batchnorm._BatchNorm)]


def freeze_bn_scales(net: nn.Module) -> None:
    """airbench: BN's scales stay 1 (not trained at all) and only its biases learn."""
    for layer in batch_norms(net):
        layer.weight.requires_grad_(False)


def parameter_groups(net: nn.Module, bn_bias_lr_scale: float, weight_decay: float) -> list[dict]:
    """The trained parameters; with `bn_bias_lr_scale` s != 1, BN's biases in a second group whose
    LR is s times the others' and weight decay 1/s of theirs, so that LR x decay stays the same
    (airbench, hlb-CIFAR10). The one-cycle schedule scales each group's LR by its `lr_scale`."""
    trained = [p for p in net.parameters() if p.requires_grad]
    if bn_bias_lr_scale == 1:
        return [{"params": trained}]
    biases = {id(layer.bias) for layer in batch_norms(net)}
    return [{"params": [p for p in trained if id(p) not in biases], "name": "weights"},
            {"params": [p for p in trained if id(p) in biases], "name": "bn_biases", "lr_scale": bn_bias_lr_scale,
             "weight_decay": weight_decay / bn_bias_lr_scale}]


class EpochStats(Metric):
    """Mean cross-entropy and accuracy over an epoch, on the device, gathered across processes:
    what MeanMetric and MulticlassAccuracy give, in two kernels a step (argmax, ==; the loss kept
    as an expanded view) against their 64 aten ops, each a launch on a GPU (benchmarks/RESULTS.md)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("losses", [], dist_reduce_fx="cat")  # per image: its batch's mean loss
        self.add_state("hits", [], dist_reduce_fx="cat")  # per image: prediction == label

    def update(self, logits: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor) -> None:
        self.losses.append(loss.detach().expand(labels.numel()))
        self.hits.append(logits.detach().argmax(-1) == labels)

    def compute(self) -> dict[str, torch.Tensor]:
        # lists on one process; after a multi-process sync, already one concatenated tensor each
        if isinstance(self.hits, list) and not self.hits:  # no step this epoch (a resume at its end)
            nan = torch.tensor(float("nan"), device=self.device)
            return {"loss": nan, "acc": nan}
        losses, hits = dim_zero_cat(self.losses), dim_zero_cat(self.hits)
        return {"loss": losses.float().mean(), "acc": hits.float().mean()}


class MixedResNetModule(L.LightningModule):
    """Wraps a plain `nn.Module` classifier.

    `optimizer` and `scheduler` are partials (Hydra `_partial_: true`): the optimizer gets the
    parameters, the scheduler gets the optimizer plus `total_steps` and `steps_per_epoch`,
    which only the Trainer knows (`estimated_stepping_batches`), so a sweep over epochs or
    batch size never makes OneCycleLR step past its end.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler],
        channels_last: bool = True,
        compile: bool | str = False,
        label_smoothing: float = 0.0,
        tta: str = "none",
        freeze_bn_weights: bool = False,
        bn_bias_lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        compile_mode(compile)
        check("model.label_smoothing", label_smoothing, float, low=0, below=1, fix="e.g. 0.2 (0: off)")
        check("model.tta", tta, choices=TTA_MODES,
              fix="flip averages each image's logits with its mirror's; multi adds 1-pixel shifts (6 views)")
        check("model.freeze_bn_weights", freeze_bn_weights, choices=(False, True))
        check("model.bn_bias_lr_scale", bn_bias_lr_scale, float, above=0, fix="1: the LR of the other weights; airbench: 64")
        # Only plain values go into checkpoints (the partials stay out), so they load with weights_only.
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.label_smoothing, self.tta = float(label_smoothing), tta
        self.net = net
        if freeze_bn_weights:
            freeze_bn_scales(net)
        self.example_input_array = torch.zeros(2, 3, 32, 32)
        self.stats = nn.ModuleDict({f"{stage}_stats": EpochStats() for stage in ("train", "val", "test")})
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # kept in checkpoints, so a resumed run knows its best
        self.compiled_net: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.range_test = False  # set by the LR range test
        self.range_test_losses: list[torch.Tensor] = []

    # --- memory format and compilation ------------------------------------------------------

    def setup(self, stage: str) -> None:
        # channels_last is faster on a CPU (benchmarks/RESULTS.md, "Figures the code and docs cite")
        # and it is what cuDNN's bf16 convolutions want.
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.hparams.compile and self.compiled_net is None:
            # Graphs that an earlier run in this process compiled (a sweep's previous job, the LR
            # range test) would count toward torch's limit of graphs per function, past which it
            # runs the net uncompiled: each module starts afresh (the disk cache still serves them).
            torch.compiler.reset()
            # Where the steps will run: the module itself is moved there after this hook.
            device_type = self.trainer.strategy.root_device.type
            # The bound forward, not the module, so checkpoints keep plain parameter names.
            self.compiled_net = compiled(self.net.forward, self.hparams.compile, device_type)

    def memory_format(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The plain net: the model summary, TensorBoard's graph, Grad-CAM and predictions run it
        as it is; only the training, validation and test steps run the compiled one."""
        return self.net(self.memory_format(images))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """What the steps classify with: the compiled net with `model.compile` on, else the plain one;
        outside training, averaged over the views `model.tta` names."""
        net = self.compiled_net or self.net
        return views_averaged(net, self.memory_format(images), "none" if self.training else self.tta)

    @property
    def classifier(self) -> nn.Module:
        """The plain net as validation and test classify with it (`model.tta`), for the analysis."""
        return with_tta(self.net, self.hparams.tta)

    # --- steps --------------------------------------------------------------------------------

    def step(self, batch, stage: str) -> torch.Tensor:
        images, labels = batch
        logits = self.logits(images)
        # Label smoothing shapes the training loss only: validation and test report plain
        # cross-entropy, which compares across recipes.
        smoothing = self.label_smoothing if stage == "train" else 0.0
        loss = F.cross_entropy(logits, labels, label_smoothing=smoothing)
        # Kept on the device, nothing here waits for the GPU; read once per epoch (log_epoch).
        self.stats[f"{stage}_stats"].update(logits, labels, loss)
        return loss

    def log_epoch(self, stage: str) -> dict[str, torch.Tensor]:
        """The epoch's loss and accuracy, summed across processes by `compute` (so every process
        logs the same values: sync_dist only states it), then reset for the next epoch."""
        stats = self.stats[f"{stage}_stats"]
        values = stats.compute()
        stats.reset()
        self.log(f"{stage}/loss", values["loss"], prog_bar=stage != "train", sync_dist=True)
        self.log(f"{stage}/acc", values["acc"], prog_bar=True, sync_dist=True)
        return values

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.step(batch, "train")
        if self.range_test:
            self.range_test_losses.append(loss.detach())  # raw, on the device; read once at the end
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self.step(batch, "val")

    def on_train_epoch_end(self) -> None:
        self.log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        values = self.log_epoch("val")
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(values["acc"])
        # the same value on every process (val/acc is synced); sync_dist only states it
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    def test_step(self, batch, batch_idx: int) -> None:
        self.step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self.log_epoch("test")

    # The training epoch's stats so far travel in the checkpoint (outside the weights' state_dict), so
    # that a resume from mid-epoch (a timed last.ckpt, an interrupt) reports the epoch's train/acc whole.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        stats = self.stats["train_stats"]
        checkpoint["train_stats"] = {name: torch.cat(getattr(stats, name)) if getattr(stats, name) else None
                                     for name in ("losses", "hits")}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        stats = self.stats["train_stats"]
        for name, value in checkpoint.get("train_stats", {}).items():
            setattr(stats, name, [] if value is None else [value.to(self.device)])

    # --- optimizer and schedule ------------------------------------------------------------------

    def parameter_groups(self) -> list[dict]:
        weight_decay = getattr(self.optimizer_factory, "keywords", {}).get("weight_decay", 0.0)
        return parameter_groups(self.net, self.hparams.bn_bias_lr_scale, weight_decay)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameter_groups())
        if self.range_test:  # Lightning's LR range test brings its own scheduler
            return optimizer
        trainer = self.trainer
        total_steps = int(trainer.estimated_stepping_batches)
        steps_per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
        scheduler = self.scheduler_factory(optimizer, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

