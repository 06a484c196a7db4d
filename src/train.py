"""Train the mixed ResNet on CIFAR-10: python src/train.py [overrides], -m for sweeps."""

from resnet_onecycle.cli import main

if __name__ == "__main__":
    main("train", "train", "test/acc")
