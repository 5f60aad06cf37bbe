"""Hypothesis profiles: `default` for the normal run, `thorough` for a long one.

Choose with HYPOTHESIS_PROFILE=thorough; REFATTN_EXAMPLES overrides the example count.
"""

import os

from hypothesis import HealthCheck, settings

_common = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("default", max_examples=25, derandomize=True, **_common)
settings.register_profile("thorough", max_examples=500, **_common)
profile = os.environ.get("HYPOTHESIS_PROFILE", "default")
if "REFATTN_EXAMPLES" in os.environ:
    settings.register_profile(
        "custom",
        parent=settings.get_profile(profile),
        max_examples=int(os.environ["REFATTN_EXAMPLES"]),
    )
    profile = "custom"
settings.load_profile(profile)


def pytest_ignore_collect(collection_path, config):
    """Benchmarks time things; the normal run does not. Run them with
    `pytest tests/benchmarks --benchmark-only`."""
    if collection_path.name == "benchmarks" and not config.getoption("benchmark_only", False):
        return True
    return None
