"""Evaluate a checkpoint: python src/eval.py ckpt_path=<run>/checkpoints/last.ckpt [overrides]."""

from resnet_onecycle.cli import main


def evaluate(cfg):
    # imported here, for a job alone: --help, --cfg and a mistyped key need not wait for Lightning
    from resnet_onecycle.tasks import evaluate

    return evaluate(cfg)


if __name__ == "__main__":
    main("eval", evaluate, "test/acc")
