"""Reader for a plain image folder, in capture order (natural sort of the file names)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vpr_core.data.images import ImageFiles, list_images

NS_PER_S = 1_000_000_000


@dataclass
class Config:
    """``rate_hz`` gives the frames stamps (frame i at i / rate_hz seconds) so that time-based
    keyframe selection works on folders too; without it frames have no stamp."""

    recursive: bool = False
    rate_hz: float | None = None
    camera: str = ""

    def __post_init__(self) -> None:
        if self.rate_hz is not None and not self.rate_hz > 0:
            raise ValueError(f"rate_hz must be > 0, got {self.rate_hz}")


def open_source(path: Path, config: Config) -> ImageFiles:
    files = list_images(path, recursive=config.recursive)
    stamps = None
    if config.rate_hz is not None:
        stamps = [round(i * NS_PER_S / config.rate_hz) for i in range(len(files))]
    return ImageFiles(path, files, camera=config.camera or Path(path).name, stamps_ns=stamps)
