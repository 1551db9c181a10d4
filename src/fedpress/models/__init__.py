"""Image classifiers for the federated experiments, built by name.

``build_model(name, in_channels, num_classes, image_size)``; names: ``cnn``, ``cnn-fedavg``, ``mlp``,
``resnet8``, ``resnet18``. Importing the model modules registers them.
"""

from . import cnn, mlp, resnet  # noqa: F401  (registration side effect)
from .registry import MODELS, available_models, build_model, count_parameters, register_model

__all__ = ["MODELS", "available_models", "build_model", "count_parameters", "register_model"]
