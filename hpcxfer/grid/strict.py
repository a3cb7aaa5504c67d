"""The base of every grid section: strict types, and unknown keys as errors that list the valid ones."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from hpcxfer.grid.limits import short


class Strict(BaseModel):
    """Unknown keys are errors that list the valid ones."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            keys = [f.alias or name for name, f in cls.model_fields.items()]
            unknown = sorted((k for k in data if k not in keys), key=repr)
            if unknown:
                valid = ", ".join(keys)
                raise ValueError(f"unknown key {short(unknown[0])}; valid keys: {valid}")
        elif data is not None and not isinstance(data, BaseModel):
            raise ValueError(f"expected a mapping, got {type(data).__name__} {short(data)}")
        return data
