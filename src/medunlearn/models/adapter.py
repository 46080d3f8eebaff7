"""Use any image classifier (``torch.nn.Module`` mapping images to logits) with medunlearn.

medunlearn's metrics need two views of a classifier: its logits and its penultimate features
(representation-level checks, the Newton step's last-layer curvature). Its own models expose
``features(x)`` and ``head``; :func:`as_classifier` gives any other module the same shape:

* the **head** is the module's last ``nn.Linear`` (by registration order; name another with
  ``head="classifier.3"``);
* the **features** are what the head receives, captured by a forward hook and flattened;
* images arrive as float in [0, 1], (N, C, H, W); give ``mean``/``std`` when the module expects
  normalised inputs (e.g. ImageNet statistics for a torchvision network).

Example::

    net = torchvision.models.resnet18(num_classes=2)
    model = as_classifier(net, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medunlearn.errors import ConfigError


class WrappedClassifier(nn.Module):
    """A user's module with ``features(x)``, ``head`` and optional input normalisation."""

    def __init__(self, module: nn.Module, head: nn.Linear, mean: Sequence[float] | None,
                 std: Sequence[float] | None) -> None:
        super().__init__()
        self.module = module
        self._head_ref = [head]  # a plain list: the head stays registered inside ``module`` only
        self.normalize = mean is not None
        if self.normalize:
            self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1))

    @property
    def head(self) -> nn.Linear:
        return self._head_ref[0]

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std if self.normalize else x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, D): the flattened input of the head."""
        captured: list[torch.Tensor] = []

        def grab(_mod, args):
            captured.append(args[0])

        handle = self.head.register_forward_pre_hook(grab)
        try:
            self.module(self._inputs(x))
        finally:
            handle.remove()
        if not captured:
            raise ConfigError("The classifier's head (its last nn.Linear) was not called in the "
                              "forward pass; name the final layer with as_classifier(model, "
                              "head='name.of.layer').")
        return torch.flatten(captured[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(self._inputs(x))


def find_head(module: nn.Module, head: str | None = None) -> nn.Linear:
    """The module's final linear layer (the last ``nn.Linear``, or the one named ``head``)."""
    if head is not None:
        try:
            layer = module.get_submodule(head)
        except AttributeError:
            raise ConfigError(f"The model has no submodule named {head!r}; pass the name of its "
                              "final nn.Linear layer (see model.named_modules()).") from None
        if not isinstance(layer, nn.Linear):
            raise ConfigError(f"{head!r} is a {type(layer).__name__}, not an nn.Linear.")
        return layer
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(module).__name__} has no nn.Linear layer to use as the "
                          "classification head; wrap it so that it ends in one, or give "
                          "features and head through medunlearn.models.Classifier.")
    return linears[-1]


def as_classifier(module: nn.Module, *, head: str | None = None,
                  mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None) -> nn.Module:
    """Return ``module`` unchanged if it already has ``features`` and ``head``; otherwise wrap it.

    Raises:
        ConfigError: no linear head, an unknown head name, or mismatched mean/std.
    """
    from medunlearn.models.ensemble import has_parts

    if head is None and mean is None and has_parts(module):  # incl. a sharded ensemble
        return module
    if (mean is None) != (std is None) or (mean is not None and len(mean) != len(std)):
        raise ConfigError("Give mean and std together, one value per input channel.")
    return WrappedClassifier(module, find_head(module, head), mean, std)


def reinitialized(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with freshly initialised weights (every submodule's
    ``reset_parameters``, seeded): the same architecture, trained on nothing. Normalisation
    buffers are kept. Used by ``retrain`` when no model factory is given."""
    import copy

    fresh = copy.deepcopy(model)
    torch.manual_seed(seed)
    reset = 0
    for m in fresh.modules():
        if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
            m.reset_parameters()
            reset += 1
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
    if reset == 0:
        raise ConfigError(f"Cannot rebuild {type(model).__name__} from scratch: none of its "
                          "layers has reset_parameters(). Pass model_factory= (a callable "
                          "returning a new untrained model) to medunlearn.unlearn.")
    return fresh


__all__ = ["WrappedClassifier", "as_classifier", "find_head", "reinitialized"]
