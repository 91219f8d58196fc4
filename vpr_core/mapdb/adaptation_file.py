"""The map's optional adaptation (``adaptation.safetensors``): its manifest entry, and the checks
that tie it to this map (sha256 of the file, the encoder fingerprint it was fitted for, shapes).

The manifest's ``fingerprint`` stays the base encoder's, so a map is still refused by any other
encoder; the entry says which adaptation the stored rows were written with (None: raw encoder
outputs). Manifests written before adaptations existed lack the key and load as unadapted maps.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from vpr_core.adapt import AdaptationError, MapAdaptation
from vpr_core.mapdb.errors import MapError
from vpr_core.mapdb.manifest import MANIFEST

ADAPTATION = "adaptation.safetensors"
ENTRY_TYPES: dict[str, type] = {"file": str, "sha256": str, "version": int, "method": str, "base_fingerprint": str,
                                "places": int, "components": int, "bits_used": int}


def adaptation_entry(adaptation: MapAdaptation, blob: bytes) -> dict[str, Any]:
    """The manifest entry of ``adaptation`` stored as ``blob`` in ADAPTATION."""
    return {"file": ADAPTATION, "sha256": hashlib.sha256(blob).hexdigest(), **adaptation.summary()}


def read_adaptation(path: Path, m: dict[str, Any]) -> MapAdaptation | None:
    """The adaptation manifest ``m`` of the map at ``path`` names, checked against the manifest."""
    entry = m.get("adaptation")
    if entry is None:
        return None
    if not isinstance(entry, dict) or any(not isinstance(entry.get(k), t) or isinstance(entry.get(k), bool)
                                          for k, t in ENTRY_TYPES.items()):
        raise MapError(f"{MANIFEST} in {path}: the adaptation entry is malformed (fields {', '.join(ENTRY_TYPES)})")
    file = path / entry["file"]
    if file.name != entry["file"] or not file.is_file():
        raise MapError(f"adaptation file {entry['file']} named by {MANIFEST} is missing in {path}")
    blob = file.read_bytes()
    if hashlib.sha256(blob).hexdigest() != entry["sha256"]:
        raise MapError(f"adaptation file {entry['file']} in {path}: sha256 does not match {MANIFEST} "
                       "(file damaged or edited); rebuild the map")
    try:
        adaptation = MapAdaptation.from_bytes(blob, f"adaptation file {entry['file']} in {path}")
    except AdaptationError as exc:
        raise MapError(str(exc)) from None
    if adaptation.base_fingerprint != m["fingerprint"]:
        raise MapError(f"adaptation file {entry['file']} in {path} was fitted for the encoder "
                       f"{adaptation.base_fingerprint!r}, the map's is {m['fingerprint']!r}; rebuild the map")
    if (adaptation.dim, adaptation.bits) != (m["dim"], m["bits"]):
        raise MapError(f"adaptation file {entry['file']} in {path} is for {adaptation.dim}-D descriptors and "
                       f"{adaptation.bits}-bit codes, the map has {m['dim']} and {m['bits']}")
    if adaptation.summary() != {k: entry[k] for k in adaptation.summary()}:
        raise MapError(f"adaptation file {entry['file']} in {path} does not match its entry in {MANIFEST}")
    return adaptation
