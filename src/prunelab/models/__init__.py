"""The model zoo: CIFAR networks of the pruning papers plus every torchvision classifier.

    >>> from prunelab import models
    >>> net = models.create("resnet56")            # CIFAR-10 ResNet-56
    >>> net = models.create("resnet50", num_classes=100)   # torchvision ResNet-50
    >>> net.prunelab_arch
    {'name': 'resnet50', 'kwargs': {'num_classes': 100}}

Importing this package registers our models (one family per module).
"""

from prunelab.models import (
    cifar_mobilenet,
    cifar_resnet,
    cifar_vgg,
    densenet,
    pointnet2,
    wide_resnet,
)
from prunelab.models.registry import (
    check_name,
    create,
    create_from_arch,
    default_input_size,
    default_num_classes,
    detection_task,
    is_registered,
    list_models,
    register_model,
)

__all__ = [
    "check_name",
    "cifar_mobilenet",
    "cifar_resnet",
    "cifar_vgg",
    "create",
    "create_from_arch",
    "default_input_size",
    "default_num_classes",
    "densenet",
    "detection_task",
    "is_registered",
    "list_models",
    "pointnet2",
    "register_model",
    "wide_resnet",
]
