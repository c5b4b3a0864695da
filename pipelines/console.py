"""Progress lines from inside Ray Train workers, printed once.

Ray Train V2 replaces ``print`` in its workers with a version that logs the
message through the root logger (to the worker's stderr) *and*, whenever
``sys.stdout`` is not ``sys.__stdout__``, also prints it. Ray's workers always
wrap ``sys.stdout`` (``ray._private.utils.Unbuffered``), so every ``print`` in a
train function reaches the driver twice (Ray 2.60). Writing to the stream
directly bypasses the patch: the line goes to the worker's stdout once, and Ray's
log monitor forwards it to the driver with the usual ``(RayTrainWorker pid=...)``
prefix. Outside Ray (in-process runs, tests) it is an ordinary print.
"""

from __future__ import annotations

import sys


def say(message: str) -> None:
    """Write one line to stdout and flush it, without going through ``builtins.print``."""
    stream = sys.stdout
    stream.write(message + "\n")
    stream.flush()
