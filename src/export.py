"""Export a trained model to ONNX, checked with onnxruntime: python src/export.py [ckpt_path=...]."""

from resnet_onecycle.cli import main


def export(cfg):
    # imported here, for a job alone: --help, --cfg and a mistyped key need not wait for Lightning
    from resnet_onecycle.tasks import export

    return export(cfg)


if __name__ == "__main__":
    main("export", export)
