"""Export a trained model to ONNX, checked with onnxruntime: python src/export.py [ckpt_path=...]."""

from resnet_onecycle.cli import main

if __name__ == "__main__":
    main("export", "export")
