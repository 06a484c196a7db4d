"""Evaluate a checkpoint: python src/eval.py ckpt_path=<run>/checkpoints/last.ckpt [overrides]."""

import sys

import hydra
from omegaconf import DictConfig

from resnet_onecycle.errors import UserError
from resnet_onecycle.tasks import evaluate


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    try:
        return evaluate(cfg).get("test/acc")
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
