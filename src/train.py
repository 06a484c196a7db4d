"""Train the mixed ResNet on CIFAR-10: python src/train.py [overrides], -m for sweeps."""

from resnet_onecycle.cli import main


def train(cfg):
    # imported here, for a job alone: --help, --cfg and a mistyped key need not wait for Lightning
    from resnet_onecycle.tasks import train

    return train(cfg)


if __name__ == "__main__":
    main("train", train, "test/acc")
