"""Classify images with a trained model: python src/predict.py inputs=<file | folder | glob> [ckpt_path=...]."""

from resnet_onecycle.cli import main

if __name__ == "__main__":
    main("predict", "predict")
