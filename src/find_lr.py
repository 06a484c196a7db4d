"""The LR range test: python src/find_lr.py [overrides]; prints the max LR to use."""

from resnet_onecycle.cli import main
from resnet_onecycle.tasks import find_lr

if __name__ == "__main__":
    main("find_lr", find_lr, "suggested_max_lr")
