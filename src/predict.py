"""Classify images with a trained model: python src/predict.py inputs=<file | folder | glob> [ckpt_path=...]."""

from resnet_onecycle.cli import main


def predict(cfg):
    # imported here, for a job alone: --help, --cfg and a mistyped key need not wait for Lightning
    from resnet_onecycle.tasks import predict

    return predict(cfg)


if __name__ == "__main__":
    main("predict", predict)
