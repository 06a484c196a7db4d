"""The LR range test: python src/find_lr.py [overrides]; prints the max LR to use."""

from resnet_onecycle.cli import main

if __name__ == "__main__":
    main("find_lr", "find_lr", "suggested_max_lr")
