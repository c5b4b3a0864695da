"""Errors about the user's input, phrased to name the thing and the fix."""


class InputError(ValueError):
    """Bad input location or format (missing path, empty folder, not a tar...)."""
