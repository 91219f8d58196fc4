"""A textured box room rendered by ray casting, for tests that need images with exactly known geometry.

Real photographs make realistic features, but their camera poses are unknown; this renderer pastes
real rtabmap_loop frames onto the six faces of an axis-aligned room (one different frame per face,
stretched once over the face, never tiled, so no feature repeats) and renders it from any camera
pose, returning the exact depth too. World axes follow the OpenCV camera at the identity pose:
x right, y down (floor at +y), z forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vpr_core.loop.camera_model import CameraModel

ROOM_MIN = np.array([-2.5, -1.4, -2.5])
ROOM_MAX = np.array([2.5, 1.4, 4.0])
# rtabmap_loop frames chosen for rich, different texture; one per face in the order of FACES.
TEXTURE_FRAMES = (3, 17, 30, 45, 58, 72)
# (axis of the face normal, which bound); the other two axes span the texture.
FACES = ((0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1))


def load_textures(data: Path) -> list[np.ndarray]:
    """The RGB frames pasted onto the faces, from the data sets' folder `data`."""
    images = []
    for frame in TEXTURE_FRAMES:
        path = data / "rtabmap_loop" / "images" / f"{frame:04d}.jpg"
        image = cv2.imread(str(path))
        if image is None:
            raise FileNotFoundError(f"{path} is missing: set VPR_DATA to the shared data folder")
        images.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return images


@dataclass(frozen=True)
class Render:
    image: np.ndarray  # RGB uint8 [H, W, 3]
    depth: np.ndarray  # float32 [H, W], metres along the camera's z axis


def rotation(yaw_deg: float = 0.0, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> np.ndarray:
    """World <- camera rotation: yaw about y (down), then pitch about x, then roll about z."""
    yaw = cv2.Rodrigues(np.array([0.0, np.radians(yaw_deg), 0.0]))[0]
    pitch = cv2.Rodrigues(np.array([np.radians(pitch_deg), 0.0, 0.0]))[0]
    roll = cv2.Rodrigues(np.array([0.0, 0.0, np.radians(roll_deg)]))[0]
    return yaw @ pitch @ roll


def render(
    textures: list[np.ndarray],
    camera: CameraModel,
    size: tuple[int, int],
    r_world_cam: np.ndarray,
    t_world_cam: np.ndarray,
) -> Render:
    """Image and depth of the room seen by ``camera`` ([height, width] = ``size``) at the pose
    (R, t) world <- camera; the camera's distortion is honoured (rays come from ``normalize``)."""
    height, width = size
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    rays_cam = np.concatenate(
        [camera.normalize(np.stack([u.ravel(), v.ravel()], axis=1)), np.ones((u.size, 1))], axis=1
    )
    rays = rays_cam @ np.asarray(r_world_cam, np.float64).T
    origin = np.asarray(t_world_cam, np.float64)
    # From inside a convex box the visible face is the nearest one each ray leaves through.
    with np.errstate(divide="ignore", invalid="ignore"):
        steps = np.stack(
            [((ROOM_MAX if side else ROOM_MIN)[axis] - origin[axis]) / rays[:, axis] for axis, side in FACES],
            axis=1,
        )
    steps[~(steps > 0)] = np.inf
    face = np.argmin(steps, axis=1)
    step = steps[np.arange(face.size), face]
    hits = origin + rays * step[:, None]

    image = np.zeros((height * width, 3), np.uint8)
    for index, (axis, _) in enumerate(FACES):
        a, b = [k for k in range(3) if k != axis]
        texture = textures[index]
        th, tw = texture.shape[:2]
        map_x = (hits[:, a] - ROOM_MIN[a]) / (ROOM_MAX[a] - ROOM_MIN[a]) * (tw - 1)
        map_y = (hits[:, b] - ROOM_MIN[b]) / (ROOM_MAX[b] - ROOM_MIN[b]) * (th - 1)
        sampled = cv2.remap(
            texture,
            map_x.reshape(height, width).astype(np.float32),
            map_y.reshape(height, width).astype(np.float32),
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT,
        ).reshape(-1, 3)
        chosen = face == index
        image[chosen] = sampled[chosen]
    # The rays have z = 1 in the camera frame, so the ray parameter is the depth.
    depth = step.reshape(height, width).astype(np.float32)
    return Render(image.reshape(height, width, 3), depth)


def true_relative(
    r_world_query: np.ndarray, t_world_query: np.ndarray, r_world_match: np.ndarray, t_world_match: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """T_match_query = T_world_match^-1 T_world_query as (R, t)."""
    rotation_ = r_world_match.T @ r_world_query
    translation = r_world_match.T @ (np.asarray(t_world_query) - np.asarray(t_world_match))
    return rotation_, translation
