"""The original's one-cycle policy, stated in epochs, built on torch's OneCycleLR.

The original says "max/10 up to max by epoch 5, back down by the last epoch". OneCycleLR speaks
in fractions of the run (pct_start) and divisors of the *initial* LR (final_div_factor), so
this turns epochs and an end LR into those, for whatever epochs and batch size a run has.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import OneCycleLR

from resnet_onecycle.errors import ConfigError, check


def one_cycle(
    optimizer: Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: int,
    max_lr: float,
    peak_epoch: float = 5,
    div_factor: float = 10.0,
    end_lr: float | None = None,
    anneal_strategy: str = "linear",
    cycle_momentum: bool = False,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
) -> OneCycleLR:
    """LR goes linearly from max_lr/div_factor to max_lr at the end of `peak_epoch`, then to `end_lr`.

    `end_lr=None` comes back to the starting LR, max_lr/div_factor, as the original does; `end_lr=0`
    ends at zero. cifar10-fast's 0 -> 0.4 -> 0 is `max_lr=0.4, div_factor=1e4, end_lr=0` (a first
    step at 4e-5 rather than a wasted one at exactly 0).
    With `cycle_momentum=False` the optimizer's own momentum is left alone.
    """
    check_one_cycle(total_steps=total_steps, steps_per_epoch=steps_per_epoch, max_lr=max_lr,
                    peak_epoch=peak_epoch, div_factor=div_factor, end_lr=end_lr)
    start_lr = max_lr / div_factor
    end_lr = start_lr if end_lr is None else end_lr
    # OneCycleLR peaks at step pct_start * total_steps - 1: the last step of `peak_epoch`.
    pct_start = peak_epoch * steps_per_epoch / total_steps
    return OneCycleLR(
        optimizer,
        max_lr=[max_lr * group.get("lr_scale", 1.0) for group in optimizer.param_groups],  # see module.parameter_groups
        total_steps=total_steps,
        pct_start=pct_start,
        anneal_strategy=anneal_strategy,
        div_factor=div_factor,
        final_div_factor=start_lr / end_lr if end_lr > 0 else float("inf"),  # OneCycleLR's end: start / this
        cycle_momentum=cycle_momentum,
        base_momentum=base_momentum,
        max_momentum=max_momentum,
        three_phase=False,
    )


def check_one_cycle(
    *, max_lr: float, peak_epoch: float = 5, div_factor: float = 10.0, end_lr: float | None = None,
    epochs: int | None = None, total_steps: int | None = None, steps_per_epoch: int | None = None, **_,
) -> None:
    """Raise ConfigError naming the config key when a one-cycle schedule cannot be built.

    Training calls it with the scheduler's config and `epochs` (trainer.max_epochs) before any
    work starts, where max_lr may still be `auto` (the LR range test picks it); `one_cycle` calls
    it again with the steps, once the data is known.
    """
    if max_lr == "auto" and total_steps is None:
        max_lr = float("inf")  # not known yet: the rest is checked without it
    check("model.scheduler.max_lr", max_lr, float, above=0, fix="or auto, e.g. model.scheduler.max_lr=0.02")
    check("model.scheduler.div_factor", div_factor, float, above=0, fix="10 starts at max_lr/10")
    check("model.scheduler.end_lr", end_lr, float, low=0, optional=True,
          fix="null comes back to the starting LR, max_lr/div_factor")
    if end_lr is not None and end_lr > max_lr:
        raise ConfigError(f"model.scheduler.end_lr={end_lr!r} must not exceed max_lr={max_lr}; "
                          "null comes back to the starting LR, max_lr/div_factor.")
    check("model.scheduler.peak_epoch", peak_epoch, float, above=0, fix="e.g. model.scheduler.peak_epoch=5")
    if epochs is not None:
        check("trainer.max_epochs", epochs, int, above=peak_epoch,
              fix=f"the one-cycle LR needs epochs after its peak (model.scheduler.peak_epoch={peak_epoch}) to come "
                  "down. Lower peak_epoch or raise max_epochs")
    if total_steps is not None and steps_per_epoch is not None and peak_epoch * steps_per_epoch < 2:
        # OneCycleLR divides by the warm-up's steps less one
        raise ConfigError(
            f"model.scheduler.peak_epoch={peak_epoch!r} with {steps_per_epoch} step(s) an epoch gives a warm-up of "
            f"{peak_epoch * steps_per_epoch:g} step(s), and the one-cycle LR needs at least 2: raise "
            "model.scheduler.peak_epoch, or lower data.batch_size (or raise data.subset) for more steps an epoch."
        )
    if total_steps is not None and steps_per_epoch is not None and not 0 < peak_epoch * steps_per_epoch < total_steps - 1:
        raise ConfigError(
            f"model.scheduler.peak_epoch={peak_epoch!r} must lie strictly inside the run's {total_steps / steps_per_epoch:g} "
            f"epochs ({total_steps} steps of which {steps_per_epoch} per epoch), so that both the warm-up and "
            "the way down last at least one step: lower peak_epoch or raise trainer.max_epochs."
        )
