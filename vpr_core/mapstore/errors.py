"""Errors of the map stores beyond MapError (a map or its input is unusable)."""


class MapUnavailable(ConnectionError):
    """The map's database could not be reached or did not answer in time. Nothing is wrong with the
    map: the same call may succeed later (the node keeps running and retries at the next frame)."""
