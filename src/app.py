"""The web app over a trained model: python src/app.py [ckpt_path=...] [app.port=7860]."""

from resnet_onecycle.cli import main


def app(cfg):
    # imported here, for a job alone: --help, --cfg and a mistyped key need not wait for Lightning
    from resnet_onecycle.tasks import app

    return app(cfg)


if __name__ == "__main__":
    main("app", app)
