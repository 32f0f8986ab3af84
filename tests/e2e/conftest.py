"""Fixtures for end-to-end tests: a fresh :class:`Topology` per test, logs shown on failure."""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest

from tests.e2e.harness import Topology, probe_namespaces, skip_reason, sweep_stale

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Keep each phase's report on the item so fixtures can tell, at teardown, if a test failed.
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


@pytest.fixture(scope="session")
def e2e_machine() -> None:
    """Skip unless this machine can run e2e tests; clear namespaces left by dead runs."""
    reason = skip_reason()
    if reason is None:
        sweep_stale()
        reason = probe_namespaces()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def topo(e2e_machine: None, request: pytest.FixtureRequest) -> Iterator[Topology]:
    """Guest, host and dead-end namespaces for this test; on failure, print every log."""
    topology = Topology(request.node.name)
    try:
        yield topology
    finally:
        reports = request.node.stash.get(_REPORTS, {})
        if any(r.failed for r in reports.values()):
            print(f"=== e2e logs ({topology.dir}; SLIRPTRIO_E2E_KEEP=1 keeps it)")
            print(topology.logs())
        topology.close()
