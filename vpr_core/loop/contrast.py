"""How much an image shows: the RMS contrast of its grey values, in [0, 1].

A frame with next to no contrast (a tunnel, a dark room, a lens cap, a white wall) gives a descriptor
that matches every other such frame with a high score, so such frames must never close a loop or be
accepted as a localization. On the Nordland-tiny development section the black tunnel frames, with
the cab's lamp and time stamp as the only marks, lie at 0.012-0.02 (176 of 5722 frames) and were the
highest-scoring false loop closures; textured frames start above 0.05 there, and every Corridor and
rtabmap_loop frame is above 0.08. Hence the default threshold 0.03 of LoopConfig and
AcceptanceConfig.
"""

from __future__ import annotations

import cv2
import numpy as np


def image_contrast(rgb: np.ndarray) -> float:
    """Standard deviation of the luminance of an RGB uint8 image, divided by 255."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or not rgb.size:
        raise ValueError(f"image_contrast needs an RGB uint8 [H, W, 3] image; got "
                         f"{getattr(rgb, 'dtype', type(rgb).__name__)} {getattr(rgb, 'shape', '')}")
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    _, std = cv2.meanStdDev(grey)
    return float(std[0, 0]) / 255.0
