"""Evaluate a checkpoint: python src/eval.py ckpt_path=<run>/checkpoints/last.ckpt [overrides]."""

import hydra
from omegaconf import DictConfig

from resnet_onecycle.cli import check_command_line, run
from resnet_onecycle.tasks import evaluate


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    return run(evaluate, cfg)


if __name__ == "__main__":
    check_command_line("eval")
    main()
