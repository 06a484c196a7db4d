"""LR range test: python src/find_lr.py [overrides]; prints the model.scheduler.max_lr to train with."""

import sys

import hydra
from omegaconf import DictConfig

from resnet_onecycle.errors import UserError
from resnet_onecycle.tasks import find_lr


@hydra.main(version_base="1.3", config_path="../configs", config_name="find_lr")
def main(cfg: DictConfig) -> float | None:
    try:
        result = find_lr(cfg)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"Suggested max LR ({result['method']}): model.scheduler.max_lr={result['suggested_max_lr']:.4g}")
    print(f"Plot: {cfg.paths.output_dir}/lr_find.png")
    return result["suggested_max_lr"]


if __name__ == "__main__":
    main()
