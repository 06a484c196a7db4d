"""LR range test: python src/find_lr.py [overrides]; prints the model.scheduler.max_lr to train with."""

import hydra
from omegaconf import DictConfig

from resnet_onecycle.cli import check_command_line, run
from resnet_onecycle.tasks import find_lr


@hydra.main(version_base="1.3", config_path="../configs", config_name="find_lr")
def main(cfg: DictConfig) -> float | None:
    return run(find_lr, cfg, "suggested_max_lr")


if __name__ == "__main__":
    check_command_line("find_lr")
    main()
