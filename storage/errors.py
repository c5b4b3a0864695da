"""Errors about the user's input, phrased to name the thing and the fix.

The storage layer owns it because it sits below everything that raises it (curation, pipelines):
a bad uri, a missing bucket or a file that is not what it claims are all user input.
"""


class InputError(ValueError):
    """Bad input location or format (missing path, empty folder, unreadable bucket, not a tar...)."""
