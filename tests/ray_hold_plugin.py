"""A method for the Ray tests: magnitude pruning, except that while the file named by
``HARNESS_TEST_HOLD_FLAG`` exists it marks its start (the flag's name + ".held") and waits
there, so that a test can stop the cluster while the cell runs. Loaded into Ray workers
through ``HARNESS_PLUGINS``."""

import os
import time
from pathlib import Path

from baselines.magnitude import Magnitude
from harness import hookimpl


class Hold(Magnitude):
    name = "hold"
    description = "magnitude, after waiting while the hold flag exists (tests)"

    def compress(self, model, calibration, target):
        flag = Path(os.environ.get("HARNESS_TEST_HOLD_FLAG", "/nonexistent"))
        if flag.exists():
            flag.with_name(flag.name + ".held").touch()
        while flag.exists():
            time.sleep(0.1)
        return super().compress(model, calibration, target)


@hookimpl
def register_methods(register):
    register(Hold())
