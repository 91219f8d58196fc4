"""The one error type of the map database."""


class MapError(ValueError):
    """A map directory or its input is unusable; the message names the file and what is wrong."""
