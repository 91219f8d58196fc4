"""Small pieces of the node's input side: CameraInfo topic names, QoS profiles, depth images."""

import numpy as np
import pytest
from rclpy.qos import ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image

from vpr_core.data.frame import DataError
from vpr_core.data.ros_image import depth_msg_to_metres
from vpr_ros.runtime import camera_info_sibling, sensor_qos


@pytest.mark.parametrize("image, info", [
    ("camera/image_raw", "camera/camera_info"),
    ("/robot/front/image_raw/compressed", "/robot/front/camera_info"),
    ("/cam/image", "/cam/camera_info"),
    ("image_raw", "camera_info"),
    ("/image_raw", "/camera_info"),
])
def test_camera_info_is_the_image_topics_sibling(image, info):
    assert camera_info_sibling(image) == info


def test_qos_profiles_are_built_not_borrowed():
    depth_before = qos_profile_sensor_data.depth
    best_effort = sensor_qos({"qos_depth": depth_before + 7}, reliable=False)
    reliable = sensor_qos({"qos_depth": 3}, reliable=True)
    assert best_effort.depth == depth_before + 7 and best_effort.reliability == ReliabilityPolicy.BEST_EFFORT
    assert reliable.depth == 3 and reliable.reliability == ReliabilityPolicy.RELIABLE
    assert qos_profile_sensor_data.depth == depth_before  # rclpy's shared profile untouched


def _depth(encoding: str, values: np.ndarray, bigendian: bool = False) -> Image:
    data = values.astype(values.dtype.newbyteorder(">" if bigendian else "<")).tobytes()
    return Image(height=values.shape[0], width=values.shape[1], encoding=encoding, is_bigendian=int(bigendian),
                 step=values.shape[1] * values.itemsize, data=data)


def test_depth_images_become_metres_with_nan_for_no_reading():
    mm = np.array([[0, 1500], [65535, 250]], np.uint16)
    np.testing.assert_allclose(depth_msg_to_metres(_depth("16UC1", mm)), [[np.nan, 1.5], [65.535, 0.25]])
    np.testing.assert_allclose(depth_msg_to_metres(_depth("16UC1", mm, bigendian=True)),
                               [[np.nan, 1.5], [65.535, 0.25]])
    metres = np.array([[np.inf, 2.0], [np.nan, -1.0]], np.float32)
    np.testing.assert_allclose(depth_msg_to_metres(_depth("32FC1", metres)), [[np.nan, 2.0], [np.nan, np.nan]])
    with pytest.raises(DataError, match="encoding 'rgb8'"):
        depth_msg_to_metres(Image(height=1, width=1, encoding="rgb8", step=3, data=b"\x00" * 3))
    with pytest.raises(DataError, match="bytes"):
        depth_msg_to_metres(Image(height=2, width=2, encoding="16UC1", step=4, data=b"\x00" * 6))
