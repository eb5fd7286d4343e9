"""Errors the model package raises on purpose."""


class CheckpointError(ValueError):
    """A model directory that cannot be loaded, with the reason."""
