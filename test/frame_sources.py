"""Frame sources shared by the map-building tests."""

from itertools import islice


class FirstFrames:
    """The first `n` frames of a source; `stop_at` raises in the middle like a Ctrl-C would."""

    def __init__(self, source, n: int, stop_at: int | None = None) -> None:
        self.source, self.n, self.stop_at = source, n, stop_at
        self.name = source.name

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for i, frame in enumerate(islice(self.source, self.n)):
            if i == self.stop_at:
                raise KeyboardInterrupt
            yield frame
