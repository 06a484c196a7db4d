"""Classify images with a trained model: python src/predict.py inputs=<file | folder | glob> [ckpt_path=...]."""

from resnet_onecycle.cli import main
from resnet_onecycle.tasks import predict

if __name__ == "__main__":
    main("predict", predict)
