from resnet_onecycle.models.mixed_resnet import BasicBlock, MixedResNet
from resnet_onecycle.models.tta import TTA_MODES, FlipAveraged, flip_averaged

__all__ = ["BasicBlock", "FlipAveraged", "MixedResNet", "TTA_MODES", "flip_averaged"]
