"""Checks of caller-supplied codes and descriptors, shared by the map database and the searcher.

Everything that enters a map or a search passes here first, so bad input (NaN from a broken encoder,
a transposed array, unpacked bits) is refused with the argument's name before anything is written.
"""

from __future__ import annotations

import numpy as np

UNIT_NORM_TOL = 1e-2  # float16 storage alone moves a unit norm by up to ~1e-3
_CHECK_ROWS = 65536  # bounded temporaries when checking large in-memory arrays


def check_codes(name: str, codes: object, code_bytes: int | None = None) -> np.ndarray:
    """Packed binary codes: uint8 [N, bits/8], as `np.packbits(x >= 0, axis=1)` gives."""
    if not isinstance(codes, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(codes).__name__}")
    if codes.dtype != np.uint8:
        raise ValueError(
            f"{name} must be packed uint8 codes [N, bits/8] (np.packbits(x >= 0, axis=1)), got dtype {codes.dtype}"
        )
    if codes.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, bits/8], got shape {codes.shape} (use x[None] for one row)")
    if code_bytes is not None and codes.shape[1] != code_bytes:
        raise ValueError(
            f"{name} has {codes.shape[1]} bytes per code ({codes.shape[1] * 8} bits), expected {code_bytes}"
        )
    if codes.shape[1] == 0:
        raise ValueError(f"{name} has zero bytes per code")
    return np.ascontiguousarray(codes)


def check_descriptors(
    name: str, desc: object, dim: int | None = None, *, check_values: bool = True
) -> np.ndarray:
    """Float descriptors [N, D], finite and L2-normalised (cosine = dot product downstream).

    Returned with their own float dtype; `check_values=False` skips the value checks for memory maps
    whose content the map database already verified (reading them would page in the whole file)."""
    if not isinstance(desc, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(desc).__name__}")
    if desc.dtype not in (np.float16, np.float32, np.float64):
        raise ValueError(f"{name} must be float16/float32/float64, got dtype {desc.dtype}")
    if desc.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, D], got shape {desc.shape} (use x[None] for one row)")
    if dim is not None and desc.shape[1] != dim:
        raise ValueError(f"{name} has dimension {desc.shape[1]}, expected {dim}")
    if desc.shape[1] == 0:
        raise ValueError(f"{name} has dimension 0")
    if check_values:
        for start in range(0, len(desc), _CHECK_ROWS):
            part = np.asarray(desc[start : start + _CHECK_ROWS], dtype=np.float32)
            sq = np.einsum("ij,ij->i", part, part)  # NaN/Inf anywhere make the squared norm non-finite
            bad = ~(np.abs(sq - 1.0) <= 2 * UNIT_NORM_TOL)
            if bad.any():
                row = int(np.argmax(bad))
                if not np.isfinite(part[row]).all():
                    raise ValueError(f"{name} row {start + row} contains NaN or Inf")
                raise ValueError(
                    f"{name} row {start + row} has L2 norm {np.sqrt(sq[row]):.4f}; descriptors must be L2-normalised"
                )
    return desc


def check_same_rows(**arrays: object) -> int:
    """All named inputs describe the same places; returns that count."""
    counts = {name: len(a) for name, a in arrays.items()}  # type: ignore[arg-type]
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{name}={n}" for name, n in counts.items())
        raise ValueError(f"row counts disagree: {listing}")
    return next(iter(counts.values()))
