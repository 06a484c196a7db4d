"""Evaluate a checkpoint: python src/eval.py ckpt_path=<run>/checkpoints/last.ckpt [overrides]."""

from resnet_onecycle.cli import main

if __name__ == "__main__":
    main("eval", "evaluate", "test/acc")
