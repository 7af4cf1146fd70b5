"""What every test shares: a binary the harness needs but cannot find (harness.processes.MissingBinary)
fails the test, never skips it, with the message the integration tests have always given; CI
installs the binaries (`make deps`)."""
import pytest

from harness.processes import MissingBinary


def _fail(binary: str):
    pytest.fail(f"{binary} not found: run `make deps` (Debian package) before the integration tests", pytrace=False)


def _fail_on_missing_binary():
    try:
        return (yield)
    except MissingBinary as e:
        missing = e.name
    _fail(missing)  # outside the except: the failure is the message alone


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):  # fixtures that start Prometheus or backfill with promtool
    return (yield from _fail_on_missing_binary())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _fail_on_missing_binary())


@pytest.fixture
def closing():
    """Register sim boxes (or anything with close()) to close after the test."""
    boxes = []
    yield boxes.append
    for b in boxes:
        b.close()
