"""Input schemas of MindVideo models that the relay knows, validated before anything is sent.

The schema of ``apimart-doubao-seedance-4-0`` is MindVideo's own (see the API page): strict types,
``additionalProperties: false``, enums and bounds, and "reference image count plus n must be 15 or
less". ``size`` is typed only as a string there, but the page lists its supported ratios; they are
checked here (by the relay and by ``relay sim`` alike), so a ratio MindVideo does not support is
named before anything is spent. Models without a schema here pass through for MindVideo to judge.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

SEEDANCE_4_0 = "apimart-doubao-seedance-4-0"
MAX_IMAGES_PER_TASK = 15
# "Supported ratios: 1:1, 4:3, 3:4, 16:9, 9:16, 3:2, 2:3, 21:9, 9:21, auto." (MindVideo's page)
SizeRatio = Literal["1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "21:9", "9:21", "auto"]
SUPPORTED_SIZES: tuple[str, ...] = get_args(SizeRatio)


class FieldError(BaseModel):
    """One reason an input was refused, naming the field as a dotted path."""

    field: str
    message: str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SequentialOptions(_Strict):
    max_images: StrictInt | None = Field(default=None, ge=1, le=MAX_IMAGES_PER_TASK)


class SeedanceInput(_Strict):
    """Input of ``apimart-doubao-seedance-4-0``, field for field as MindVideo publishes it."""

    prompt: StrictStr = Field(min_length=1, max_length=1000)
    n: StrictInt = Field(default=1, ge=1, le=MAX_IMAGES_PER_TASK)
    size: SizeRatio = "1:1"
    watermark: StrictBool = False
    image_urls: list[StrictStr] | None = Field(
        default=None, min_length=1, max_length=MAX_IMAGES_PER_TASK
    )
    resolution: Literal["1K", "2K", "4K"] = "2K"
    optimize_prompt_options: Literal["standard", "fast"] = "standard"
    sequential_image_generation: Literal["disabled", "auto"] = "disabled"
    sequential_image_generation_options: SequentialOptions | None = None


def _seedance_rules(value: SeedanceInput) -> list[FieldError]:
    refs = len(value.image_urls or [])
    if refs + value.n > MAX_IMAGES_PER_TASK:
        return [
            FieldError(
                field="input.image_urls",
                message=(
                    f"reference image count ({refs}) plus n ({value.n}) must be "
                    f"{MAX_IMAGES_PER_TASK} or less"
                ),
            )
        ]
    return []


_SCHEMAS: dict[str, tuple[type[BaseModel], Callable[[Any], list[FieldError]]]] = {
    SEEDANCE_4_0: (SeedanceInput, _seedance_rules),
}


def known_models() -> frozenset[str]:
    """The model slugs whose input the relay validates locally."""
    return frozenset(_SCHEMAS)


def validate_input(model: str, payload: object) -> list[FieldError] | None:
    """Check ``payload`` against the model's schema.

    Returns ``None`` when the model has no known schema (pass it through), otherwise the list of
    field errors, empty when the input is valid.
    """
    entry = _SCHEMAS.get(model)
    if entry is None:
        return None
    schema, rules = entry
    if not isinstance(payload, dict):
        return [FieldError(field="input", message="must be a JSON object")]
    try:
        parsed = schema.model_validate(payload)
    except ValidationError as exc:
        return [_field_error(err) for err in exc.errors(include_url=False)]
    return rules(parsed)


def _field_error(err: Any) -> FieldError:
    path = ".".join(str(part) for part in ("input", *err["loc"]))
    if err["type"] == "extra_forbidden":
        return FieldError(field=path, message="is not a known field of this model")
    if err["type"] == "missing":
        return FieldError(field=path, message="is required")
    return FieldError(field=path, message=str(err["msg"]))
