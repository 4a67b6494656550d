"""Tests against real services (a SLURM cluster, PostgreSQL) skip where the service is absent, and fail instead
when ``RNNBENCH_REQUIRE_SERVICES=1`` (set by ``.ci/run``, which brings the services up first)."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_ENV = "RNNBENCH_REQUIRE_SERVICES"


def service_missing(service: str, why: str) -> NoReturn:
    """Skip the test, or fail it when services are required."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{service} is required ({REQUIRE_ENV}=1) but {why}", pytrace=False)
    pytest.skip(f"{service} is not available here: {why}")
