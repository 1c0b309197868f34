"""The suite imports the project as installed (`pip install -e .`): only through `dynvm`.

Hypothesis profiles: "ci" (the default) is derandomized, so every run draws the same examples
and a red CI run is reproducible; "long" samples fresh examples, ten times as many, for a local
hunt (`HYPOTHESIS_PROFILE=long python -m pytest -n 2 -q tests`). Neither has a deadline: a
first call JIT-compiles kernels, so example times vary by orders of magnitude.
"""
import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow],
                          max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
