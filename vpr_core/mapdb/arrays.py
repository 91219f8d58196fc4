"""Append-only `.npy` arrays with per-block CRC-32 checksums.

Why `.npy` and not a custom format: any numpy can open the map's arrays (`np.load(..., mmap_mode="r")`)
and numpy's header writer pads the header so its length does not change when the row count grows,
which lets an append write rows at the end and then rewrite the header in place.

Why CRC-32 in blocks: a CRC can be continued from its previous value over new bytes, so an append
costs O(new rows), and a damaged file is reported with the block (row range) that is wrong. zlib's
CRC-32 runs at about 2 GB/s here, so verifying a 4 GB descriptor file takes a few seconds.

Row-count rule used for crash safety: the manifest's count is the committed state. A file may hold
more rows than the manifest (an append that was killed before its commit; those rows are ignored and
overwritten by the next append) but never fewer.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from vpr_core.fsio import sync_file
from vpr_core.mapdb.errors import MapError

ROWS_PER_BLOCK = 4096
_IO_ROWS = 4096  # rows per read/write call when streaming big arrays


@dataclass(frozen=True)
class ArrayHeader:
    rows: int
    cols: int
    dtype: np.dtype
    offset: int  # bytes before the first row

    @property
    def row_bytes(self) -> int:
        return self.cols * self.dtype.itemsize


def header_bytes(dtype: np.dtype, rows: int, cols: int) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (rows, cols)}
    )
    return buf.getvalue()


def read_header(path: Path, what: str) -> ArrayHeader:
    """Parse and check a `.npy` header; `what` names the file in error messages."""
    if not path.is_file():
        raise MapError(f"{what} is missing ({path})")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise MapError(f"{what}: unsupported .npy version {version}")
            offset = f.tell()
    except MapError:
        raise
    except (ValueError, OSError) as exc:
        raise MapError(f"{what} is not a valid .npy file: {exc}") from exc
    if fortran or len(shape) != 2:
        raise MapError(f"{what} must be a C-ordered 2-D array, found shape {shape} fortran_order={fortran}")
    if dtype.hasobject:
        raise MapError(f"{what} holds Python objects, which a map never stores")
    return ArrayHeader(rows=int(shape[0]), cols=int(shape[1]), dtype=dtype, offset=offset)


def extend_crcs(crcs: list[int], rows_before: int, data: np.ndarray) -> list[int]:
    """Checksums after appending `data` to an array whose first `rows_before` rows gave `crcs`."""
    out = list(crcs)
    row = rows_before
    pos = 0
    n = len(data)
    while pos < n:
        in_block = row % ROWS_PER_BLOCK
        take = min(ROWS_PER_BLOCK - in_block, n - pos)
        chunk = np.ascontiguousarray(data[pos : pos + take])
        if in_block == 0:
            out.append(zlib.crc32(chunk))
        else:
            out[-1] = zlib.crc32(chunk, out[-1])
        row += take
        pos += take
    return out


def expected_blocks(rows: int) -> int:
    return -(-rows // ROWS_PER_BLOCK)


def verify_crcs(path: Path, what: str, header: ArrayHeader, rows: int, crcs: list[int]) -> None:
    """Re-read the first `rows` rows with plain reads (not the memory map, so the process's resident
    memory stays small) and compare each block's CRC."""
    if len(crcs) != expected_blocks(rows):
        raise MapError(
            f"manifest.json lists {len(crcs)} checksum blocks for {what} but {rows} rows need {expected_blocks(rows)}"
        )
    with open(path, "rb") as f:
        f.seek(header.offset)
        for b, want in enumerate(crcs):
            r0 = b * ROWS_PER_BLOCK
            r1 = min(rows, r0 + ROWS_PER_BLOCK)
            got = zlib.crc32(f.read((r1 - r0) * header.row_bytes))
            if got != want:
                raise MapError(f"{what}: checksum mismatch in rows {r0}..{r1 - 1} (file damaged or edited)")


def check_layout(path: Path, what: str, header: ArrayHeader, rows: int, cols: int, dtype: np.dtype) -> None:
    """The header and file size must hold at least the committed rows, with the promised dtype and width."""
    if header.dtype != dtype:
        raise MapError(f"{what} has dtype {header.dtype}, expected {dtype}")
    if header.cols != cols:
        raise MapError(f"{what} has {header.cols} columns, expected {cols}")
    if header.rows < rows:
        raise MapError(f"count mismatch: {what} holds {header.rows} rows but manifest.json says {rows}")
    need = header.offset + rows * header.row_bytes
    size = path.stat().st_size
    if size < need:
        have = max(0, size - header.offset) // header.row_bytes
        raise MapError(
            f"{what} is truncated: {size} bytes hold {have} complete rows, manifest.json says {rows}"
        )


def write_new(path: Path, dtype: np.dtype, cols: int, chunks: Iterable[np.ndarray]) -> tuple[int, list[int]]:
    """Write a fresh array from row chunks (memory maps welcome); returns (rows, block CRCs)."""
    rows, crcs = 0, []
    with open(path, "wb") as f:
        f.write(header_bytes(dtype, 0, cols))
        for chunk in chunks:
            for start in range(0, len(chunk), _IO_ROWS):
                part = np.ascontiguousarray(chunk[start : start + _IO_ROWS], dtype=dtype)
                f.write(part.data)
                crcs = extend_crcs(crcs, rows, part)
                rows += len(part)
        f.seek(0)
        f.write(header_bytes(dtype, rows, cols))
        sync_file(f)
    return rows, crcs


def append_rows(path: Path, header: ArrayHeader, committed_rows: int, data: np.ndarray) -> None:
    """Write `data` after the committed rows (dropping rows of an uncommitted earlier append), then
    raise the header's row count. Readers keep using the manifest's count until the caller commits.

    The header never names more rows than the file holds, wherever a crash lands, so plain
    `np.load(mmap_mode="r")` opens the file at any moment: it is lowered before the truncation.
    """
    with open(path, "r+b") as f:
        end = header.offset + committed_rows * header.row_bytes
        if header.rows != committed_rows:
            f.write(header_bytes(header.dtype, committed_rows, header.cols))
            sync_file(f)
        f.truncate(end)
        f.seek(end)
        for start in range(0, len(data), _IO_ROWS):
            f.write(np.ascontiguousarray(data[start : start + _IO_ROWS], dtype=header.dtype).data)
        sync_file(f)
        f.seek(0)
        f.write(header_bytes(header.dtype, committed_rows + len(data), header.cols))
        sync_file(f)


def read_rows(path: Path, header: ArrayHeader, rows: int) -> np.ndarray:
    return np.fromfile(path, dtype=header.dtype, count=rows * header.cols, offset=header.offset).reshape(
        rows, header.cols
    )
