"""Evaluate a checkpoint: python src/eval.py ckpt_path=<run>/checkpoints/last.ckpt [overrides]."""

from resnet_onecycle.cli import main
from resnet_onecycle.tasks import evaluate

if __name__ == "__main__":
    main("eval", evaluate, "test/acc")
