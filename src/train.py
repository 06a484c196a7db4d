"""Train the mixed ResNet on CIFAR-10: python src/train.py [overrides], -m for sweeps."""

import sys

import hydra
from omegaconf import DictConfig

from resnet_onecycle.errors import UserError
from resnet_onecycle.tasks import train


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        return train(cfg).get("test/acc")
    except UserError as error:  # bad input: the message says it all, a traceback would bury it
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
