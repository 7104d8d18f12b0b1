"""``dense``: the uncompressed model, the reference row of every leaderboard."""

from harness import hookimpl
from harness.method import CompressionReport, Method


class Dense(Method):
    name = "dense"
    kind = "reference"
    patterns = ("unstructured", "2:4", "4:8")
    needs_calibration = False
    description = "the uncompressed model (reference row)"

    def compress(self, model, calibration, target):
        return CompressionReport(notes=["nothing removed"])


@hookimpl
def register_methods(register):
    register(Dense())
