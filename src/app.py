"""The web app over a trained model: python src/app.py [ckpt_path=...] [app.port=7860]."""

from resnet_onecycle.cli import main

if __name__ == "__main__":
    main("app", "app")
