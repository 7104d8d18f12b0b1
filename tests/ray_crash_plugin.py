"""A method for the Ray tests: magnitude pruning, except that while the file named by
``HARNESS_TEST_CRASH_FLAG`` exists it kills its own worker process (as an OOM or a lost node
would). Every attempt is counted in ``HARNESS_TEST_CRASH_COUNT``. Loaded into Ray workers
through ``HARNESS_PLUGINS``."""

import os
from pathlib import Path

from baselines.magnitude import Magnitude
from harness import hookimpl


class Crash(Magnitude):
    name = "crash"
    description = "magnitude, or a dead worker while the crash flag exists (tests)"

    def compress(self, model, calibration, target):
        count = os.environ.get("HARNESS_TEST_CRASH_COUNT")
        if count:
            with open(count, "a") as f:
                f.write("attempt\n")
        if Path(os.environ.get("HARNESS_TEST_CRASH_FLAG", "/nonexistent")).exists():
            os._exit(1)
        return super().compress(model, calibration, target)


@hookimpl
def register_methods(register):
    register(Crash())
