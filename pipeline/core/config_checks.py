"""The value checks the config sections share: the messages name the key, its value and the fix."""

from __future__ import annotations

from typing import Any

from pipeline.core.errors import ConfigError

AUTO = "auto"
SCALES = ("n", "s", "m", "l", "x")
SENSORS = ("rgb", "thermal")
PRECISIONS = ("fp32", "fp16", "int8")


def require(condition: bool, key: str, value: Any, fix: str) -> None:
    if not condition:
        raise ConfigError(f"{key}={value!r} is invalid: {fix}")


def require_auto_or_number(key: str, value: Any, minimum: float = 0.0, nullable: bool = False) -> None:
    if value == AUTO or (nullable and value is None):
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= minimum
    require(ok, key, value, f"use 'auto' or a number >= {minimum}")
