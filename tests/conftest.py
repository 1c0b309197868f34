"""The suite imports the project as installed (`pip install -e .`): only through `dynvm`.

Hypothesis profiles: "ci" (the default) is derandomized, so every run draws the same examples
and a red CI run is reproducible, and draws 75 per test (`tests.strategies.examples` scales the
tests' own counts by the same factor) to keep the suite within its time budget on 2 cores;
"long" samples fresh examples, 1000 per test, for a local hunt
(`HYPOTHESIS_PROFILE=long python -m pytest -n 2 -q tests`). Neither has a deadline: a
first call JIT-compiles kernels, so example times vary by orders of magnitude.
"""
import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow], max_examples=75)
settings.register_profile("long", deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow],
                          max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
