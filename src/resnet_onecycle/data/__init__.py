from resnet_onecycle.data.cifar10 import Batches, CIFAR10DataModule
from resnet_onecycle.data.sources import CLASSES, DataSourceError

__all__ = ["Batches", "CIFAR10DataModule", "CLASSES", "DataSourceError"]
