"""Inference engines: one ``Encoder`` contract, backends chosen by name (torch, onnxruntime, tensorrt).

``create_encoder(EncoderConfig(...))`` is all the node, the offline replay and the map builder call.
"""

from vpr_core.engine.config import EncoderConfig
from vpr_core.engine.encoder import Encoder
from vpr_core.engine.errors import BackendUnavailable, ExportError
from vpr_core.engine.registry import BACKENDS, create_encoder, resolve_backend

__all__ = ["BACKENDS", "BackendUnavailable", "Encoder", "EncoderConfig", "ExportError", "create_encoder",
           "resolve_backend"]
