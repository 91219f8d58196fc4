"""The candidate models of the default-model selection: a small YAML/JSON list, or the built-in one.

A candidate is a model (a preset with its untrained heads, or a head checkpoint), the backend that
runs it, and the map adaptation applied on each set's map (none, PCA-whitening, or whitening + ITQ
binarisation; fitted without labels). Candidates that share a model share its encodings, so one
entry per adaptation costs no extra encoding. Exactly one candidate is the baseline the selection
rule compares against (the frozen lite0 in the built-in list).

File format (a list; ``backend`` defaults to auto, ``adapt`` to none, ``baseline`` to false)::

    - {name: lite0-frozen, preset: lite0, adapt: none, baseline: true}
    - {name: lite0-nordland, checkpoint: checkpoints/lite0-nordland, adapt: itq}

Checkpoint paths are relative to the directory the command runs in (the repository root in the
documented commands), so a candidate file never names a machine's absolute paths.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vpr_core.adapt import ADAPT_METHODS
from vpr_core.choices import BACKEND_CHOICES
from vpr_core.cli_options import DEFAULT_CHECKPOINT, NORDLAND_CHECKPOINT
from vpr_core.engine.config import EncoderConfig
from vpr_core.model.config import PRESETS

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class Candidate:
    name: str
    preset: str = ""
    checkpoint: str = ""
    backend: str = "auto"
    adapt: str = "none"
    baseline: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"candidate name {self.name!r}: use letters, digits and _ . + - (it is also the "
                             "--final argument), starting with a letter or digit")
        if bool(self.preset) == bool(self.checkpoint):
            raise ValueError(f"candidate {self.name}: give exactly one of preset and checkpoint")
        if self.preset and self.preset not in PRESETS:
            raise ValueError(f"candidate {self.name}: unknown preset {self.preset!r}; known: {', '.join(PRESETS)}")
        if self.checkpoint and not Path(self.checkpoint).is_dir():
            raise ValueError(f"candidate {self.name}: checkpoint directory {self.checkpoint} does not exist "
                             "(paths are relative to the directory the command runs in)")
        if self.backend not in BACKEND_CHOICES:
            raise ValueError(f"candidate {self.name}: backend must be one of {', '.join(BACKEND_CHOICES)}, "
                             f"got {self.backend!r}")
        if self.adapt not in ADAPT_METHODS:
            raise ValueError(f"candidate {self.name}: adapt must be one of {', '.join(ADAPT_METHODS)}, "
                             f"got {self.adapt!r}")
        if not isinstance(self.baseline, bool):
            raise ValueError(f"candidate {self.name}: baseline must be true or false, got {self.baseline!r}")

    @property
    def model_key(self) -> tuple[str, str, str]:
        """Candidates with equal keys produce the same encodings (they differ in adaptation only)."""
        return self.preset, self.checkpoint, self.backend

    def encoder_config(self, threads: int = 0) -> EncoderConfig:
        return EncoderConfig(preset=self.preset, checkpoint=self.checkpoint, backend=self.backend, threads=threads)


def default_candidates() -> list[Candidate]:
    """Frozen lite0 (the baseline), the Nordland-trained heads, the fused default, and the stronger
    frozen backbones this installation has presets for; each without and with map adaptation."""
    models = [("lite0-frozen", {"preset": "lite0"}),
              ("lite0-nordland", {"checkpoint": str(NORDLAND_CHECKPOINT)}),
              ("lite0-fused", {"checkpoint": str(DEFAULT_CHECKPOINT)})]
    models += [(f"{p}-frozen", {"preset": p}) for p in ("lite1", "lite2") if p in PRESETS]
    return [Candidate(name=name if adapt == "none" else f"{name}+{adapt}", adapt=adapt,
                      baseline=(name == "lite0-frozen" and adapt == "none"), **model)
            for name, model in models for adapt in ("none", "whiten", "itq")]


def load_candidates(path: str | Path) -> list[Candidate]:
    """The candidates of a YAML or JSON file (see the module doc), checked as a whole."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"candidate file {path} not found")
    text = path.read_text()
    try:
        entries = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise ValueError(f"{path} is not valid {kind}: {' '.join(str(exc).split())}") from None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty list of candidates, got {type(entries).__name__}")
    return check_candidates([_candidate(entry, f"{path}: entry {i + 1}") for i, entry in enumerate(entries)])


def check_candidates(candidates: list[Candidate]) -> list[Candidate]:
    """Refuses lists the rule cannot be applied to: repeated names, or not exactly one baseline."""
    names = [c.name for c in candidates]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"candidate names must be unique; repeated: {', '.join(repeated)}")
    baselines = [c.name for c in candidates if c.baseline]
    if len(baselines) != 1:
        raise ValueError(f"exactly one candidate must have baseline: true (the model the rule compares "
                         f"against), got {len(baselines)}{': ' + ', '.join(baselines) if baselines else ''}")
    return candidates


def baseline_of(candidates: list[Candidate]) -> Candidate:
    return next(c for c in check_candidates(candidates) if c.baseline)


def _candidate(entry: Any, where: str) -> Candidate:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a mapping (name, preset or checkpoint, backend, adapt), "
                         f"got {type(entry).__name__}")
    known = {f.name for f in dataclasses.fields(Candidate)}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    if "name" not in entry:
        raise ValueError(f"{where}: every candidate needs a name")
    try:
        return Candidate(**entry)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
