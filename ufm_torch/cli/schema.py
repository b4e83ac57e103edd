"""The typed schema of the composed ``train`` config: every user-facing key, its type and its allowed range.

Each field's ``description`` is its allowed range in words; :func:`schema_error` turns pydantic's first error into
the one-line message ``ufm-train`` prints. A key that the selected group option does not have is simply absent
(``None`` default, never validated); keys the schema does not name (``_target_``, other options' keys) are allowed.
Types are strict: no booleans or fractional floats for integers, no strings for numbers, finite floats only. An
integral float is an integer (Hydra reads ``trainer.max_steps=1e3`` as the float 1000.0): the checked value is the
integer, and :func:`ufm_torch.cli.validation.validate_config` writes it back into the config.

The schema imports neither torch nor Lightning, so that a rejected config answers before either is loaded: the loss
names come from the registry :data:`ufm_torch.objectives.losses.LOSSES` (which loads without torch); the names of
the activations and precisions are spelled out here, and ``tests/test_rejected_config.py`` checks them against
:data:`ufm_torch.models.backbones.ACTIVATIONS`, :class:`ufm_torch.models.deep_ufm.Activation` and
:data:`ufm_torch.training.precision.PRECISIONS`. ``model.activation`` takes the deep UFM's names when
``model._target_`` names :data:`DEEP_UFM_CLASS`, a backbone's otherwise.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FiniteFloat,
    Strict,
    StrictBool,
    StrictInt,
    ValidationInfo,
    field_validator,
)
from pydantic_core import ErrorDetails

from ufm_torch.objectives.losses import LOSSES

LOSS_NAMES = tuple(sorted(LOSSES))
"""The keys of :data:`ufm_torch.objectives.losses.LOSSES`, sorted."""
ACTIVATION_NAMES = ("gelu", "relu", "silu", "tanh")
"""The keys of :data:`ufm_torch.models.backbones.ACTIVATIONS`."""
DEEP_UFM_ACTIVATION_NAMES = ("linear", "relu")
"""The values of :class:`ufm_torch.models.deep_ufm.Activation`."""
DEEP_UFM_CLASS = "DeepUnconstrainedFeatures"
"""The class name of :class:`ufm_torch.models.DeepUnconstrainedFeatures`, the last part of its ``_target_``."""
PRECISIONS = ("16", "16-mixed", "16-true", "32", "32-true", "64", "64-true", "bf16", "bf16-mixed", "bf16-true")
""":data:`ufm_torch.training.precision.PRECISIONS`: every ``trainer.precision`` Lightning accepts here."""


def integral(value: Any) -> Any:
    """``value`` as an ``int`` when it is a float with an integral value (``1e3``), otherwise unchanged."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integer = Annotated[StrictInt, BeforeValidator(integral)]
Real = Annotated[FiniteFloat, Strict()]
PositiveReal = Annotated[Real, Field(gt=0)]
PositiveInt = Annotated[Integer, Field(ge=1)]
NonNegativeReal = Annotated[Real, Field(ge=0)]
Precision = Annotated[Literal[PRECISIONS], BeforeValidator(str)]
LossName = Literal[LOSS_NAMES]
ActivationName = Literal[tuple(sorted({*ACTIVATION_NAMES, *DEEP_UFM_ACTIVATION_NAMES}))]

AN_INT_AT_LEAST_1 = "an integer >= 1"
A_NUMBER_AT_LEAST_0 = "a number >= 0"
NUMBERS_AT_LEAST_0 = "a number >= 0 or a non-empty list of numbers >= 0"


class OneOrList:
    """``OneOrList[T]``: a ``T``, or a non-empty list of them, one per replica group (the keys of
    :data:`ufm_torch.hyperparameters.HYPERPARAMETERS`)."""

    def __class_getitem__(cls, item: Any) -> Any:
        return item | Annotated[list[item], Field(min_length=1)]


TRUE_OR_FALSE = "true or false"


def absent_or(allowed: str, **constraints: Any) -> Any:
    """A key that may be absent (its group option lacks it) but, when present, must be ``allowed``."""
    return Field(None, description=allowed, **constraints)


def section(group: str) -> Any:
    """A nested mapping, validated also when absent so that its required keys are reported by name."""
    return Field({}, validate_default=True, description=f"a mapping of the {group} keys")


class Section(BaseModel):
    """A mapping of config keys: the schema's keys are checked, every other key is allowed."""

    model_config = ConfigDict(extra="allow")


class DataConfig(Section):
    """``data``: the data module's keys (which ones exist depends on the data option)."""

    num_classes: Integer = absent_or("an integer >= 2", ge=2)
    samples_per_class: PositiveInt | Annotated[list[PositiveInt], Field(min_length=1)] = absent_or(
        "an integer >= 1 or a list of integers >= 1, one per class"
    )
    imbalance_ratio: Real = absent_or("a number >= 1", ge=1)
    minority_classes: Integer | None = absent_or("null or an integer >= 0", ge=0)
    batch_size: PositiveInt | None = absent_or("null (full batch) or an integer >= 1")
    steps_per_epoch: Integer = absent_or(AN_INT_AT_LEAST_1, ge=1)
    input_dim: Integer = absent_or(AN_INT_AT_LEAST_1, ge=1)
    in_channels: Integer = absent_or(AN_INT_AT_LEAST_1, ge=1)
    heldout_per_class: Integer = absent_or("an integer >= 0", ge=0)
    eval_batch_size: Integer = absent_or(AN_INT_AT_LEAST_1, ge=1)
    separation: Real = absent_or(A_NUMBER_AT_LEAST_0, ge=0)
    noise_std: Real = absent_or(A_NUMBER_AT_LEAST_0, ge=0)
    download: StrictBool = absent_or(TRUE_OR_FALSE)


class ModelConfig(Section):
    """``model``: the network's keys (the UFM's or a backbone's)."""

    target: str | None = Field(None, alias="_target_", description="the network's class or factory")
    feature_dim: Integer = absent_or(AN_INT_AT_LEAST_1, ge=1)
    init_scale: PositiveReal | Annotated[list[PositiveReal], Field(min_length=1)] = absent_or(
        "a number > 0 or a non-empty list of numbers > 0"
    )
    replicas: Integer = absent_or(AN_INT_AT_LEAST_1, ge=1)
    dtype: Literal["float64", "float32"] = absent_or("one of float64, float32")
    width: Integer = absent_or(AN_INT_AT_LEAST_1, ge=1)
    depth: Integer = absent_or(AN_INT_AT_LEAST_1, ge=1)
    activation: ActivationName = absent_or(
        f"one of {', '.join(DEEP_UFM_ACTIVATION_NAMES)} for model=deep_ufm, one of {', '.join(ACTIVATION_NAMES)} "
        "for a backbone"
    )
    batch_norm: StrictBool = absent_or(TRUE_OR_FALSE)
    channels: Annotated[list[PositiveInt], Field(min_length=1)] = absent_or("a non-empty list of integers >= 1")
    bias: StrictBool = absent_or(TRUE_OR_FALSE)
    normalize: StrictBool = absent_or(TRUE_OR_FALSE)

    @field_validator("activation")
    @classmethod
    def activation_of_the_network(cls, activation: str | None, info: ValidationInfo) -> str | None:
        """The deep UFM's activations for the deep UFM, a backbone's for any other network."""
        target = info.data.get("target") or ""
        allowed = DEEP_UFM_ACTIVATION_NAMES if target.rsplit(".", 1)[-1] == DEEP_UFM_CLASS else ACTIVATION_NAMES
        if activation is not None and activation not in allowed:
            raise ValueError(f"{activation!r} is not an activation of {target}")
        return activation


class OptimizerConfig(Section):
    """``optimizer``: a ``torch.optim`` optimiser's keys; ``lr`` is required."""

    lr: OneOrList[PositiveReal] = Field(description="a number > 0 or a non-empty list of numbers > 0")
    momentum: Real = absent_or("a number in [0, 1)", ge=0, lt=1)
    weight_decay: Real = absent_or(A_NUMBER_AT_LEAST_0, ge=0)


class TrainerConfig(Section):
    """``trainer``: Lightning Trainer keys; ``max_steps`` is required."""

    max_steps: Integer = Field(ge=1, description=AN_INT_AT_LEAST_1)
    precision: Precision | None = absent_or(f"null (the precision policy decides) or one of {', '.join(PRECISIONS)}")


class ModuleConfig(Section):
    """``module``: the training module's keys."""

    loss: LossName | None = absent_or(f"null or one of {', '.join(LOSS_NAMES)}")
    fused_steps: Integer = absent_or(AN_INT_AT_LEAST_1, ge=1)
    label_smoothing: OneOrList[Annotated[Real, Field(ge=0, lt=1)]] = absent_or(
        "a number in [0, 1) or a non-empty list of them"
    )
    feature_decay: OneOrList[NonNegativeReal] = absent_or(NUMBERS_AT_LEAST_0)
    classifier_decay: OneOrList[NonNegativeReal] = absent_or(NUMBERS_AT_LEAST_0)
    hidden_decay: OneOrList[NonNegativeReal] | None = absent_or(
        f"null (module.classifier_decay) or {NUMBERS_AT_LEAST_0}"
    )
    bias_decay: OneOrList[NonNegativeReal] = absent_or(NUMBERS_AT_LEAST_0)
    temperature: OneOrList[PositiveReal] | None = absent_or(
        "null, a number > 0 or a non-empty list of numbers > 0 (one per replica group)"
    )


class CollapseMonitorConfig(Section):
    """``callbacks.collapse_monitor``: the evaluation schedule."""

    points_per_decade: Integer = absent_or(AN_INT_AT_LEAST_1, ge=1)
    every_n_steps: PositiveInt | None = absent_or("null or an integer >= 1")
    in_epochs: StrictBool = absent_or(TRUE_OR_FALSE)
    layers: list[str] | None = absent_or("null or a list of module names of the LightningModule (network.body.1, …)")
    classifier: str | None = absent_or("null (the last nn.Linear: network.head) or the classifier's module name")
    feature_map: Literal["pool", "flatten"] = absent_or("pool or flatten")


class TrainingCurvesConfig(Section):
    """``callbacks.training_curves``: the extra logging interval."""

    every_n_steps: PositiveInt | None = absent_or("null or an integer >= 1")


class DivergenceGuardConfig(Section):
    """``callbacks.divergence_guard``: how often the device is read."""

    check_every_n_steps: Integer = absent_or(AN_INT_AT_LEAST_1, ge=1)


class CallbacksConfig(Section):
    """``callbacks``: one entry per selected callback; the schedules of the package's callbacks are checked."""

    collapse_monitor: CollapseMonitorConfig = absent_or("a mapping of the collapse monitor's keys")
    training_curves: TrainingCurvesConfig = absent_or("a mapping of the training curves' keys")
    divergence_guard: DivergenceGuardConfig = absent_or("a mapping of the divergence guard's keys")


class TrainConfig(Section):
    """The composed ``train`` config without its ``hydra`` node."""

    seed: Integer = Field(ge=0, description="an integer >= 0")
    data: DataConfig = section("data")
    model: ModelConfig = section("model")
    optimizer: OptimizerConfig = section("optimizer")
    trainer: TrainerConfig = section("trainer")
    module: ModuleConfig = section("module")
    threads: PositiveInt | None = absent_or("null or an integer >= 1")
    callbacks: CallbacksConfig = section("callbacks")
    allow_unstable: StrictBool = absent_or(TRUE_OR_FALSE)
    allow_large_memory: StrictBool = absent_or(TRUE_OR_FALSE)


def failing_key(loc: tuple[int | str, ...]) -> tuple[tuple[str, ...], str]:
    """The config key (as its path) and allowed range of the schema field that an error location points into.

    Locations below a field (a list index, a union member's tag) are cut off: the whole field is reported.
    """
    schema: type[BaseModel] | None = TrainConfig
    path: list[str] = []
    allowed = ""
    for part in loc:
        if schema is None or not isinstance(part, str) or part not in schema.model_fields:
            break
        field = schema.model_fields[part]
        path.append(part)
        allowed = field.description or ""
        annotation = field.annotation
        schema = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return tuple(path), allowed


def schema_error(error: ErrorDetails, config: dict[str, Any]) -> str:
    """The one-line message for pydantic's ``error`` on ``config``: the whole key, its whole value, its range."""
    path, allowed = failing_key(error["loc"])
    key = ".".join(path)
    if error["type"] == "missing":
        return f"{key} is missing; it must be {allowed}"
    value: Any = config
    for part in path:
        value = value[part]
    return f"{key}={value!r} is not allowed; it must be {allowed}"
