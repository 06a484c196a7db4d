"""The LR range test: python src/find_lr.py [overrides]; prints the max LR to use."""

from resnet_onecycle.cli import main


def find_lr(cfg):
    # imported here, for a job alone: --help, --cfg and a mistyped key need not wait for Lightning
    from resnet_onecycle.tasks import find_lr

    return find_lr(cfg)


if __name__ == "__main__":
    main("find_lr", find_lr, "suggested_max_lr")
