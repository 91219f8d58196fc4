"""Frames a camera sent that never arrived, estimated from the stamps of those that did.

Why: with a best-effort subscription, DDS drops large images on the way (fragments lost over UDP)
before the node sees them, so the node's own drop counter stays at zero while a third of the frames
are gone. A camera stamps its frames at a steady period, so a gap of k periods between two arriving
stamps means k - 1 frames were lost upstream. The period is a low quantile of recent intervals:
losses only lengthen intervals, so while at least one interval in ten is a single period (up to ~90 %
loss) it is the camera's period, where a median would double once half the frames are lost. Stamps
that go backwards (a bag restarted, a clock reset) start the estimate over instead of counting.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

WINDOW = 50  # recent intervals the period is estimated from
QUANTILE = 10  # percentile of those intervals taken as the period
MIN_INTERVALS = 5  # intervals needed before gaps are counted
GAP = 1.5  # an interval longer than this many periods holds lost frames


@dataclass
class LossEstimate:
    received: int
    lost: int  # estimated frames lost upstream
    period_s: float | None  # the camera's period, None while unknown

    @property
    def loss_ratio(self) -> float:
        sent = self.received + self.lost
        return self.lost / sent if sent else 0.0


class UpstreamLoss:
    """The estimate for one camera; feed every arriving frame's stamp in arrival order."""

    def __init__(self) -> None:
        self._intervals: deque[int] = deque(maxlen=WINDOW)
        self._last_ns: int | None = None
        self._uncounted = True  # the first intervals wait for a period to be counted against
        self.received = 0
        self.lost = 0

    def add(self, stamp_ns: int) -> None:
        self.received += 1
        last, self._last_ns = self._last_ns, stamp_ns
        if last is None:
            return
        interval = stamp_ns - last
        if interval <= 0:  # a repeated or earlier stamp: a restarted source; forget its period
            self._intervals.clear()
            self._uncounted = True
            return
        self._intervals.append(interval)
        if len(self._intervals) == MIN_INTERVALS and self._uncounted:  # the period is known: count the start
            self.lost += sum(self._missing(i) for i in self._intervals)
            self._uncounted = False
        elif len(self._intervals) > MIN_INTERVALS:
            self.lost += self._missing(interval)

    def _missing(self, interval: int) -> int:
        period = float(np.percentile(self._intervals, QUANTILE))
        return int(round(interval / period)) - 1 if interval > GAP * period else 0

    def estimate(self) -> LossEstimate:
        enough = len(self._intervals) >= MIN_INTERVALS
        period = float(np.percentile(self._intervals, QUANTILE)) * 1e-9 if enough else None
        return LossEstimate(self.received, self.lost, period)
