from resnet_onecycle.models.mixed_resnet import BasicBlock, MixedResNet

__all__ = ["BasicBlock", "MixedResNet"]
