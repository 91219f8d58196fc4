"""The picture behind the node's `~/debug_image`: what a person checks first when a match looks wrong.

The map keeps descriptors and place records, not images, so the panel is the query frame with the
decision written under it (best place, its name in the map, score, Hamming distance, accepted or not)
rather than the query beside the map image.
"""

from __future__ import annotations

import cv2
import numpy as np

from vpr_core.frame_result import FrameResult

WIDTH = 320
BAND = 44
GREEN, RED = (40, 170, 40), (200, 40, 40)


def match_panel(result: FrameResult, width: int = WIDTH) -> np.ndarray:
    """RGB uint8 [H + BAND, width, 3]: the query scaled to `width`, then two lines of text."""
    rgb = result.frame.rgb
    height = max(1, round(rgb.shape[0] * width / rgb.shape[1]))
    panel = np.full((height + BAND, width, 3), 255, dtype=np.uint8)
    panel[:height] = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
    if result.matches:
        best = result.matches[0]
        lines = [f"place {best.place_id} ({best.record.source})",
                 f"score {best.score:.3f}  hamming {best.hamming}  {'ACCEPTED' if result.accepted else 'rejected'}"]
    else:
        lines = ["no match: the map is empty", ""]
    color = GREEN if result.accepted else RED
    for i, line in enumerate(lines):
        cv2.putText(panel, line, (4, height + 17 + 20 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.42, color, 1, cv2.LINE_AA)
    return panel
