"""Data readers: image folders, VPR benchmark layouts, season pairs and bags, as lazy frame sources.

``open_source(spec)`` gives the frames of a folder, a bag or one half of a benchmark (for map
building and replay); ``open_dataset(spec)`` gives an evaluation set with its positives. Readers are
chosen by name (``get_reader``) or detected from the layout; see ``registry`` for the spec syntax.
"""

from vpr_core.data.dataset import EvalDataset
from vpr_core.data.frame import DataError, Frame, FrameSource
from vpr_core.data.images import ImageFiles
from vpr_core.data.registry import READERS, Reader, get_reader, open_dataset, open_source, parse_spec
from vpr_core.data.seasons import NORDLAND_DEV, NORDLAND_TEST, FileRange

__all__ = [
    "NORDLAND_DEV",
    "NORDLAND_TEST",
    "READERS",
    "DataError",
    "EvalDataset",
    "FileRange",
    "Frame",
    "FrameSource",
    "ImageFiles",
    "Reader",
    "get_reader",
    "open_dataset",
    "open_source",
    "parse_spec",
]
