"""Reading weight files and checking state dicts against a module, with errors that name the problem.

``load_state_dict(strict=True)`` lists every mismatch in one long message; when a user points at the
wrong file, the first missing key, the first unexpected key or the first shape difference, together
with the file, says more. Digests are over tensors (name, dtype, shape, bytes), not files, so the
same weights read from a ``.pth`` and from a safetensors directory have the same digest.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file


class WeightsError(ValueError):
    """A weight file that cannot be used: unreadable, corrupted, or not matching the model."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, a safetensors directory (sharded or not) or a ``.pth`` file."""
    path = Path(path)
    if path.is_dir():
        single = path / "model.safetensors"
        index = path / "model.safetensors.index.json"
        if single.is_file():
            return _read_safetensors(single)
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError) as exc:
                raise WeightsError(f"{index} is not a safetensors index (no readable 'weight_map'): {exc}") from exc
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(_read_safetensors(path / shard))
            return state
        raise WeightsError(f"{path} is a directory without model.safetensors or model.safetensors.index.json")
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise WeightsError(f"cannot read {path} as a PyTorch weight file: {exc}") from exc
    if not isinstance(data, Mapping) or not all(torch.is_tensor(v) for v in data.values()):
        keys = list(data)[:5] if isinstance(data, Mapping) else type(data).__name__
        raise WeightsError(f"{path} is not a plain state dict of tensors (found {keys}); a training "
                           f"checkpoint of SelaVPR++ or SAGE is imported with vpr_core.model.released")
    return dict(data)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path} is not a readable safetensors file (corrupted or truncated?): {exc}") from exc


def check_state_dict(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor],
                     what: str, source: str | Path) -> None:
    """Raises WeightsError naming the first missing key, unexpected key or shape mismatch."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    if missing:
        raise WeightsError(f"{source} does not fit the {what}: it lacks {missing[0]!r} "
                           f"({len(missing)} missing key(s) in all)")
    if unexpected:
        raise WeightsError(f"{source} does not fit the {what}: unexpected key {unexpected[0]!r} "
                           f"({len(unexpected)} unexpected key(s) in all)")
    for key, tensor in expected.items():
        if tuple(given[key].shape) != tuple(tensor.shape):
            raise WeightsError(f"{source} does not fit the {what}: {key!r} has shape {tuple(given[key].shape)} "
                               f"in the file but {tuple(tensor.shape)} in the model")


def tensor_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of the tensors, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach()
        if tensor.is_meta:
            raise ValueError(f"cannot digest {name!r}: it is on the meta device (no values)")
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
