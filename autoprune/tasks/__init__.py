"""Tasks: what autoprune prunes and how it scores it.

A task gives a trained dense model, train/val/test loaders and top-1 accuracy (see
:class:`Task`). Built-ins: ``digits`` (default, embedded), ``fashion-mnist`` (Debian package or
any folder of IDX files), ``cifar10`` and ``imagefolder`` (the user's data); or a user's own
``task.py`` / ``package.module:attr`` through :func:`load_task`.
"""

from typing import TYPE_CHECKING

from autoprune._lazy import lazy_getattr
from autoprune.tasks._train import TaskOptions, TrainConfig, TrainingSpec
from autoprune.tasks.base import ClassificationTask, Splits, Task
from autoprune.tasks.digits import DigitsTask
from autoprune.tasks.fashion_mnist import FashionMNISTTask
from autoprune.tasks.loader import load_task
from autoprune.tasks.models import cifar_resnet, lenet5, vgg_small

if TYPE_CHECKING:
    from autoprune.tasks.vision import cifar10_task, imagefolder_task

# torchvision loads only when these are used
_LAZY = {"cifar10_task": "autoprune.tasks.vision", "imagefolder_task": "autoprune.tasks.vision"}

__all__ = [
    "ClassificationTask",
    "DigitsTask",
    "FashionMNISTTask",
    "Splits",
    "Task",
    "TaskOptions",
    "TrainConfig",
    "TrainingSpec",
    "cifar10_task",
    "cifar_resnet",
    "imagefolder_task",
    "lenet5",
    "load_task",
    "vgg_small",
]

__getattr__ = lazy_getattr(__name__, globals(), _LAZY)
