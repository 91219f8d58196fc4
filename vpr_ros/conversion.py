"""Pipeline results to rclpy messages, through the field layout of vpr_core.messages."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseWithCovarianceStamped
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from vpr_core.messages import loop_closure_fields, place_match_array_fields, pose_with_covariance_fields
from vpr_ros.msg import LoopClosure, PlaceMatchArray

if TYPE_CHECKING:  # the pipeline (and torch) only for type hints
    from vpr_core.frame_result import FrameResult


def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _message_class(type_name: str):
    package, name = type_name.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


def fill(msg, fields: dict[str, Any]):
    """Sets the fields of an rclpy message from a nested dict (lists of dicts for sequences)."""
    types = msg.get_fields_and_field_types()
    for key, value in fields.items():
        if isinstance(value, dict):
            fill(getattr(msg, key), value)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            cls = _message_class(types[key][len("sequence<"):-1])
            setattr(msg, key, [fill(cls(), v) for v in value])
        else:
            setattr(msg, key, value)
    return msg


def _header_fields(header: Header) -> dict[str, Any]:
    return {"stamp": {"sec": header.stamp.sec, "nanosec": header.stamp.nanosec}, "frame_id": header.frame_id}


def place_match_array(result: FrameResult, header: Header, map_frame: str, latency_ms: float) -> PlaceMatchArray:
    return fill(PlaceMatchArray(), place_match_array_fields(result, _header_fields(header), map_frame, latency_ms))


def loop_closure(result: FrameResult, header: Header) -> LoopClosure:
    return fill(LoopClosure(), loop_closure_fields(result, _header_fields(header)))


def pose_with_covariance(result: FrameResult, header: Header, map_frame: str) -> PoseWithCovarianceStamped:
    """~/pose: stamped like the image, in the map frame."""
    fields = {"stamp": {"sec": header.stamp.sec, "nanosec": header.stamp.nanosec}, "frame_id": map_frame}
    return fill(PoseWithCovarianceStamped(), pose_with_covariance_fields(result, fields))


def rgb_image(rgb: np.ndarray, header: Header) -> Image:
    """An rgb8 sensor_msgs/Image of an RGB uint8 array, stamped like the frame it shows."""
    return Image(header=header, height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", is_bigendian=0,
                 step=rgb.shape[1] * 3, data=np.ascontiguousarray(rgb).tobytes())
