from resnet_onecycle.models.mixed_resnet import BasicBlock, MixedResNet
from resnet_onecycle.models.tta import TTA_MODES, FlipAveraged, flip_averaged, with_tta

__all__ = ["BasicBlock", "FlipAveraged", "MixedResNet", "TTA_MODES", "flip_averaged", "with_tta"]
