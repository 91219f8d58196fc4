"""Messages to plain dicts for comparing them in tests (rosidl_runtime_py is not among PyPI's ROS wheels);
the other direction is vpr_ros.conversion.fill."""

from __future__ import annotations

from typing import Any


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
