"""Train the mixed ResNet on CIFAR-10: python src/train.py [overrides], -m for sweeps."""

import sys

import hydra
from omegaconf import DictConfig

from resnet_onecycle.errors import UserError
from resnet_onecycle.tasks import train


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        summary = train(cfg)
    except UserError as error:  # bad input or divergence: the message says it all
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if summary["status"] == "interrupted":
        print(f"Interrupted by {summary['signal']} at epoch {summary['epochs']}, step {summary['global_steps']}; "
              f"saved {summary['checkpoint']}.\nResume with: {summary['resume']}", file=sys.stderr)
        sys.exit(130 if summary["signal"] == "SIGINT" else 143)
    return summary.get("test/acc")


if __name__ == "__main__":
    main()
