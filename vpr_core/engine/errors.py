"""Errors of the inference engines; each message says what is missing or wrong and how to fix it."""


class BackendUnavailable(RuntimeError):
    """The chosen backend cannot run on this machine (a package, a GPU or a provider is missing)."""


class ExportError(RuntimeError):
    """The model could not be exported to ONNX, or the exported graph does not compute the model."""
