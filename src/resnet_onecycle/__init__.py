"""Train, sweep and explain the original's mixed ResNet on CIFAR-10 with Lightning, Hydra and one-cycle."""

__version__ = "0.1.0"
