"""pytest plugin: run the spec against an implementation inside any test suite.

    pytest --pyargs spec --refattn-impl mypkg.attention:my_sdpa

collects spec/test_conformance.py: one test per invariant, its ID in the test id. The
`refattn_impl` fixture gives the adapter of the named implementation (default: reference).
Kept light: it is loaded by every pytest run of an environment where refattn is installed.
"""

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("refattn", "refattn spec conformance")
    group.addoption(
        "--refattn-impl",
        default="reference",
        metavar="IMPL",
        help="implementation the spec's tests check (as for `refattn conform IMPL`)",
    )


@pytest.fixture(scope="session")
def refattn_impl(request):
    """The adapter of the implementation named by --refattn-impl."""
    from spec.adapters import load

    return load(request.config.getoption("--refattn-impl"))
