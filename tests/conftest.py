"""Session-wide test fixtures' clean-up."""

from tests.support import stop_shared_ray


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001
    stop_shared_ray()
