"""Session-wide test hooks: the order pytest-xdist deals modules in, and clean-up."""

from tests.support import stop_shared_ray


def pytest_collection_modifyitems(session, config, items):  # noqa: ARG001
    """Modules with slow tests first: tests/run.sh's two pytest processes take whole modules from one queue
    (``--dist loadfile``), and a long module dealt last would leave the other process idle at the end."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)  # stable: file order otherwise


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001
    stop_shared_ray()
