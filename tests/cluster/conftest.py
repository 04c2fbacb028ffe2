"""One local Ray for the tests of this package (starting one takes seconds), shut down after them: a
Ray left running through later tests kept `serve run` in tests/deployments from exiting in CI."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.served import REPO


@pytest.fixture(scope="package")
def ray_session() -> Iterator[None]:
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="WARNING",
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}},
    )
    yield
    ray.shutdown()
