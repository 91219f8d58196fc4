"""Messages to and from plain dicts for tests (rosidl_runtime_py is not among PyPI's ROS wheels)."""

from __future__ import annotations

import importlib
from typing import Any


def _message_class(type_name: str):
    package, name = type_name.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


def fill(msg, values: dict[str, Any]):
    """Sets the fields of `msg` from a nested dict (sequences of messages from lists of dicts)."""
    types = msg.get_fields_and_field_types()
    for key, value in values.items():
        kind = types[key]
        if isinstance(value, dict):
            fill(getattr(msg, key), value)
        elif kind.startswith("sequence<") and value and isinstance(value[0], dict):
            cls = _message_class(kind[len("sequence<"):-1])
            setattr(msg, key, [fill(cls(), v) for v in value])
        else:
            setattr(msg, key, value)
    return msg


def to_dict(msg) -> dict[str, Any]:
    out = {}
    for key in msg.get_fields_and_field_types():
        value = getattr(msg, key)
        if hasattr(value, "get_fields_and_field_types"):
            value = to_dict(value)
        elif isinstance(value, list) and value and hasattr(value[0], "get_fields_and_field_types"):
            value = [to_dict(v) for v in value]
        out[key] = value
    return out
