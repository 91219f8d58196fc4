"""A fitted map adaptation: plain arrays, how to apply them, and their one-file storage.

Stored as one safetensors file (arrays plus JSON metadata, nothing executable, readable by any
safetensors implementation). ``digest`` names the exact fitted content, so a map's manifest can say
which adaptation its rows were written with.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
from safetensors import SafetensorError

ADAPTATION_VERSION = 1
FORMAT = "vpr_ros map adaptation"
_ARRAYS = ("mean", "projection", "rotation")
_META_TYPES: dict[str, type] = {"method": str, "base_fingerprint": str, "places": int, "components": int,
                                "bits": int, "bits_used": int, "dim": int, "config": dict}
_MIN_NORM = 1e-12  # a query exactly at the map's mean has no direction; it stays a zero vector


class AdaptationError(ValueError):
    """An adaptation cannot be fitted, read or applied; the message says what is wrong."""


@dataclass(frozen=True)
class MapAdaptation:
    """Whitening (``mean``, ``projection`` [k, D]: the PCA directions, strongest first, with the
    eigenvalue scaling folded in) and, for ``itq``, ITQ's orthogonal ``rotation`` [b, b] of the first
    b whitened coordinates y: bit j of a code is (y[:b] @ rotation.T)[j] >= 0 for j < b and 0 for the
    remaining ``bits - b`` bits, which then add nothing to Hamming distances. The code thus lives in
    the space the float descriptor is compared in, so the two stages of a search agree.

    ``bits_used`` is b for ``itq`` and ``bits`` for ``whiten`` (the model's own code is kept).
    """

    method: str
    base_fingerprint: str
    places: int
    components: int
    bits: int
    bits_used: int
    mean: np.ndarray
    projection: np.ndarray
    rotation: np.ndarray
    config: dict[str, Any] = field(default_factory=dict)
    version: int = ADAPTATION_VERSION

    def __post_init__(self) -> None:
        d = self.mean.shape[0] if self.mean.ndim == 1 else -1
        k, b = self.components, self.rotation.shape[0]
        problems = []
        if self.method not in ("whiten", "itq"):
            problems.append(f"method {self.method!r} is not whiten or itq")
        if d < 1 or self.projection.shape != (k, d) or not 0 < k <= d:
            problems.append(f"mean {self.mean.shape} and projection {self.projection.shape} do not fit "
                            f"{k} components")
        if self.bits <= 0 or self.bits % 8:
            problems.append(f"bits {self.bits} is not a positive multiple of 8")
        itq = self.method == "itq"
        if self.rotation.ndim != 2 or self.rotation.shape != (b, b) or (b > 0) != itq \
                or self.bits_used != (b if itq else self.bits) or b > min(k, self.bits):
            problems.append(f"rotation {self.rotation.shape} and bits_used "
                            f"{self.bits_used} do not fit method {self.method!r} with {self.bits} bits")
        if not all(np.isfinite(getattr(self, name)).all() for name in _ARRAYS):
            problems.append("arrays contain NaN or inf")
        if problems:
            raise AdaptationError("inconsistent map adaptation: " + "; ".join(problems))
        for name in _ARRAYS:
            getattr(self, name).flags.writeable = False

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def summary(self) -> dict[str, Any]:
        """What a manifest or a results file records about it."""
        return {"method": self.method, "version": self.version, "base_fingerprint": self.base_fingerprint,
                "places": self.places, "components": self.components, "bits_used": self.bits_used}

    # ---- applying -------------------------------------------------------------------------------
    def project(self, desc: np.ndarray) -> np.ndarray:
        """Whitened coordinates [N, k] before padding and normalisation (unit covariance on the map
        for power 0.5 and no shrinkage)."""
        x = self._centred(desc)
        return x @ self.projection.T

    def apply(self, codes: np.ndarray, desc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The adapted (codes uint8 [N, bits/8], desc float32 unit [N, D]) of the model's outputs;
        the whitened descriptor is zero-padded back to D so every shape stays the encoder's."""
        codes = np.asarray(codes)
        if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape != (len(desc), self.bits // 8):
            raise AdaptationError(f"codes must be uint8 [{len(desc)}, {self.bits // 8}] (packed {self.bits} bits), "
                                  f"got {codes.dtype} {codes.shape}")
        y = self.project(desc)
        out = np.zeros((len(y), self.dim), np.float32)
        out[:, : self.components] = y
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), _MIN_NORM)
        if self.method != "itq":
            return codes, out
        signs = np.zeros((len(y), self.bits), bool)
        signs[:, : self.bits_used] = y[:, : self.bits_used] @ self.rotation.T >= 0
        return np.packbits(signs, axis=1), out

    def _centred(self, desc: np.ndarray) -> np.ndarray:
        desc = np.asarray(desc)
        if desc.ndim != 2 or desc.shape[1] != self.dim:
            raise AdaptationError(f"descriptors must be [N, {self.dim}], got shape {desc.shape}")
        x = desc.astype(np.float32) - self.mean
        if not np.isfinite(x).all():
            raise AdaptationError("descriptors contain NaN or inf")
        return x

    # ---- identity and storage -------------------------------------------------------------------
    def _metadata(self) -> dict[str, Any]:
        return {"method": self.method, "base_fingerprint": self.base_fingerprint, "places": self.places,
                "components": self.components, "bits": self.bits, "bits_used": self.bits_used,
                "dim": self.dim, "config": self.config}

    @property
    def digest(self) -> str:
        """sha256 of version, metadata and every array (name, dtype, shape, bytes)."""
        h = hashlib.sha256(f"{FORMAT} v{self.version}\n".encode())
        h.update(json.dumps(self._metadata(), sort_keys=True).encode())
        for name in _ARRAYS:
            a = np.ascontiguousarray(getattr(self, name), np.float32)
            h.update(f"\n{name} {a.shape}\n".encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def to_bytes(self) -> bytes:
        tensors = {name: np.ascontiguousarray(getattr(self, name), np.float32) for name in _ARRAYS}
        return safetensors.numpy.save(tensors, metadata={"format": FORMAT, "version": str(self.version),
                                                         "meta": json.dumps(self._metadata(), sort_keys=True)})

    @classmethod
    def from_bytes(cls, blob: bytes, what: str = "adaptation") -> "MapAdaptation":
        """Refuses (AdaptationError naming ``what``) a damaged file, another format or a newer version."""
        try:
            header_len = int.from_bytes(blob[:8], "little")
            header = json.loads(blob[8 : 8 + header_len])
            meta_raw = header.get("__metadata__", {}) if isinstance(header, dict) else {}
            tensors = safetensors.numpy.load(blob)
        except (SafetensorError, ValueError, UnicodeDecodeError, OverflowError) as exc:
            raise AdaptationError(f"{what} is not a readable safetensors file ({exc}); rebuild the map") from None
        if meta_raw.get("format") != FORMAT:
            raise AdaptationError(f"{what} is not a {FORMAT!r} file")
        version = meta_raw.get("version", "")
        if not version.isdigit():
            raise AdaptationError(f"{what} has no valid version ({version!r}); rebuild the map")
        if int(version) > ADAPTATION_VERSION:
            raise AdaptationError(f"{what} has version {version}, newer than this code reads ({ADAPTATION_VERSION}); "
                                  "update vpr_ros, or rebuild the map with this version")
        try:
            meta = json.loads(meta_raw.get("meta", ""))
        except ValueError:
            meta = None
        if not isinstance(meta, dict) or any(not isinstance(meta.get(k), t) or isinstance(meta.get(k), bool)
                                             for k, t in _META_TYPES.items()):
            raise AdaptationError(f"{what}: metadata missing or malformed; rebuild the map")
        if set(tensors) != set(_ARRAYS) or any(t.dtype != np.float32 for t in tensors.values()):
            raise AdaptationError(f"{what}: arrays must be float32 {', '.join(_ARRAYS)}, got {sorted(tensors)}")
        try:
            adaptation = cls(meta["method"], meta["base_fingerprint"], meta["places"], meta["components"],
                             meta["bits"], meta["bits_used"], *(tensors[name] for name in _ARRAYS),
                             config=meta["config"], version=int(version))
        except AdaptationError as exc:
            raise AdaptationError(f"{what}: {exc}") from None
        if adaptation.dim != meta["dim"]:
            raise AdaptationError(f"{what}: arrays are {adaptation.dim}-D, metadata says {meta['dim']}")
        return adaptation

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MapAdaptation":
        path = Path(path)
        if not path.is_file():
            raise AdaptationError(f"adaptation file {path} is missing")
        return cls.from_bytes(path.read_bytes(), str(path))
