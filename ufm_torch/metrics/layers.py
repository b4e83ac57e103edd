"""Reading the activations of any network's named layers: forward hooks, feature maps as rows, batches as
``(inputs, labels)``.

The collapse monitor measures a network at the modules it names (as in ``model.named_modules()``). Each named
module is read at its **output** through a forward hook, except the classifier, which is read at its **input** (the
penultimate features, where Papyan, Han & Donoho measure NC1–NC4) through a forward pre-hook; the classifier's output
(the logits) is kept too. An activation becomes one row of features per sample (:class:`FeatureMap`): a 2-D
activation ``(B, p)`` as it is, a higher-dimensional one ``(B, c, …)`` by global average pooling over the dimensions
after the channel dimension (the default) or by flattening. Every mistake of the caller is a :class:`ConfigError`
of one line: a name that does not exist (with the closest names), a classifier that is not linear, a batch or an
activation that cannot be read.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from torch import Tensor, nn

from ufm_torch.errors import ConfigError
from ufm_torch.models.head import LinearHead

BATCH_KEYS = ("inputs", "labels")
"""The keys of a dict batch: the network's input and the integer class labels."""


class FeatureMap(enum.Enum):
    """What an activation of more than two dimensions ``(B, c, d_1, …)`` becomes: ``pool`` averages over
    ``d_1, …`` (global average pooling: ``c`` features per sample), ``flatten`` keeps every entry
    (``c·d_1·…`` features)."""

    POOL = "pool"
    FLATTEN = "flatten"

    def rows(self, activation: Tensor, name: str) -> Tensor:
        """``activation`` as rows ``(B, p)``; a one-dimensional or non-tensor activation is a :class:`ConfigError`."""
        if not isinstance(activation, Tensor) or activation.ndim < 2:
            shape = tuple(activation.shape) if isinstance(activation, Tensor) else type(activation).__name__
            raise ConfigError(
                f"layer {name!r} gives {shape}, which the collapse monitor cannot read: a layer must output a tensor "
                "(batch, features) or (batch, channels, …)"
            )
        if activation.ndim == 2:
            return activation
        if self is FeatureMap.POOL:
            return activation.flatten(start_dim=2).mean(dim=-1)
        return activation.flatten(start_dim=1)


def find_module(model: nn.Module, name: str, what: str) -> nn.Module:
    """The submodule ``name`` of ``model`` (a name of ``model.named_modules()``); a :class:`ConfigError` naming the
    closest names otherwise."""
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    names = [candidate for candidate in modules if candidate]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.4) or names[:5]
    raise ConfigError(
        f"{what} {name!r} is not a module of {type(model).__name__}; the closest names of its named_modules() are "
        f"{', '.join(close)}"
    )


def is_linear_classifier(module: nn.Module) -> bool:
    """Whether ``module`` maps features to logits linearly with a weight ``(C, p)`` and a bias ``(C,)``: an
    ``nn.Linear`` or the package's :class:`ufm_torch.models.LinearHead` (with replica dimensions for the UFM)."""
    return isinstance(module, nn.Linear | LinearHead)


def default_classifier(model: nn.Module) -> str | None:
    """The name of the last ``nn.Linear`` (or ``LinearHead``) of ``model.named_modules()``, None if it has none."""
    names = [name for name, module in model.named_modules() if name and is_linear_classifier(module)]
    return names[-1] if names else None


def classifier_parameters(classifier: nn.Module) -> tuple[Tensor, Tensor]:
    """``(W, b)`` of a linear classifier, ``b = 0`` when it has no bias, both detached."""
    weight = classifier.weight.detach()
    bias = classifier.bias
    return weight, (weight.new_zeros(weight.shape[:-1]) if bias is None else bias.detach())


def read_batch(batch: object, keys: Sequence[str] = BATCH_KEYS) -> tuple[object, Tensor]:
    """``(inputs, labels)`` of a batch: a tuple or list whose first two entries they are, or a mapping with the keys
    ``keys`` (default :data:`BATCH_KEYS`). Labels must be an integer tensor ``(B,)``; anything else is a
    :class:`ConfigError`."""
    if isinstance(batch, Mapping):
        missing = [key for key in keys if key not in batch]
        if missing:
            raise ConfigError(
                f"a dict batch must hold the keys {list(keys)} (inputs, labels); this one lacks {missing} and has "
                f"{sorted(map(str, batch))}"
            )
        inputs, labels = batch[keys[0]], batch[keys[1]]
    elif isinstance(batch, tuple | list) and len(batch) >= 2:
        inputs, labels = batch[0], batch[1]
    else:
        raise ConfigError(
            f"the collapse monitor cannot read a batch of type {type(batch).__name__}: it reads (inputs, labels) "
            f"tuples or dicts with the keys {list(keys)}"
        )
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.is_floating_point() or labels.is_complex():
        shape = f"{labels.dtype} tensor {tuple(labels.shape)}" if isinstance(labels, Tensor) else type(labels).__name__
        raise ConfigError(f"a batch's labels must be an integer tensor (batch,), got a {shape}")
    return inputs, labels


@dataclass
class LayerTaps:
    """Forward hooks that catch, for each forward pass, the rows of every named layer.

    ``layers`` are module names of ``model``; a name equal to ``classifier`` is read at the classifier's input.
    After a forward pass inside :meth:`attached`, ``rows[name]`` holds ``(B, p)`` for every layer.
    """

    model: nn.Module
    layers: tuple[str, ...]
    classifier: str | None
    feature_map: FeatureMap

    def __post_init__(self) -> None:
        self.rows: dict[str, Tensor] = {}

    @contextmanager
    def attached(self) -> Iterator[LayerTaps]:
        """Hooks registered for the duration of the block, removed after it (also on error)."""
        handles = []
        for name in self.layers:
            module = find_module(self.model, name, "layer")
            if name == self.classifier:
                handles.append(module.register_forward_pre_hook(self._input_hook(name)))
            else:
                handles.append(module.register_forward_hook(self._output_hook(name)))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _input_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            self.rows[name] = self.feature_map.rows(inputs[0], name)

        return hook

    def _output_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            self.rows[name] = self.feature_map.rows(output, name)

        return hook

    def clear(self) -> None:
        """Forget the last pass's activations."""
        self.rows = {}
