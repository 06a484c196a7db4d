"""Train the mixed ResNet on CIFAR-10: python src/train.py [overrides], -m for sweeps."""

import hydra
from omegaconf import DictConfig

from resnet_onecycle.cli import check_command_line, run
from resnet_onecycle.tasks import train


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run(train, cfg)


if __name__ == "__main__":
    check_command_line("train")
    main()
