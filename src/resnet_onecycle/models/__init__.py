from resnet_onecycle.models.mixed_resnet import BasicBlock, MixedResNet
from resnet_onecycle.models.tta import DESCRIPTIONS as TTA_DESCRIPTIONS
from resnet_onecycle.models.tta import TTA_MODES, Averaged, views_averaged, with_tta

__all__ = ["TTA_DESCRIPTIONS", "Averaged", "BasicBlock", "MixedResNet", "TTA_MODES", "views_averaged", "with_tta"]
