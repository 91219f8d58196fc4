"""Map database: the places a robot can recognise, stored in one directory.

Commit protocol (why a kill never breaks a map): `manifest.json` is the only commit point and is
replaced atomically (write temporary, fsync, rename, fsync directory). A new map is written into a
temporary directory that is renamed into place. An append writes rows past the committed count in
`codes.npy`/`desc.npy` (fsync), inserts its places in one SQLite transaction, then commits a manifest
with the new count and checksums; anything written by an append that died before its commit lies
beyond the manifest's count, is ignored by readers and replaced by the next append. Writers hold an
exclusive `flock` on the map and refuse to commit over a generation they did not load.

Loading checks the schema version, the encoder fingerprint against the encoder in use, array
headers (dtype, width, rows) and sizes, agreement of counts between arrays, SQLite and manifest,
and CRC-32 checksums; each failure is a `MapError` naming the file and what is wrong. Nothing is
pickled: arrays are `.npy` read with allow_pickle=False semantics (numeric dtypes only).
"""

from vpr_core.mapdb.errors import MapError
from vpr_core.mapdb.inputs import check_codes, check_descriptors
from vpr_core.local_features import LocalFeatures
from vpr_core.mapdb.mapdb import MapDB
from vpr_core.mapdb.records import PlaceRecord

__all__ = ["LocalFeatures", "MapDB", "MapError", "PlaceRecord", "check_codes", "check_descriptors"]
