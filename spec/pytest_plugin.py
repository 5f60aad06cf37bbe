"""pytest plugin: run the spec against an implementation inside any test suite.

    pytest --pyargs refattn.spec --refattn-impl mypkg.attention:my_sdpa

collects spec/test_conformance.py: one test per invariant, its ID in the test id. A missing
capability is a skip; a declared deviation (the adapter's own, or one in --refattn-deviations)
is an expected failure: xfailed when it fails, xpassed when it does not. The `refattn_impl`
fixture gives the adapter of the named implementation (default: reference), and
`refattn_deviations` the deviations in force. Kept light: it is loaded by every pytest run of an
environment where refattn is installed.
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
    group.addoption(
        "--refattn-deviations",
        default=None,
        metavar="FILE",
        help="known deviations, one ID per line then '# reason' (as for `refattn conform`)",
    )
    group.addoption(
        "--refattn-max-examples",
        type=int,
        default=None,
        metavar="N",
        help="hypothesis examples per invariant (default: the active hypothesis profile's)",
    )


@pytest.fixture(scope="session")
def refattn_impl(request):
    """The adapter of the implementation named by --refattn-impl."""
    from refattn.adapters import PeerNotInstalled, load

    name = request.config.getoption("--refattn-impl")
    try:
        return load(name)
    except PeerNotInstalled as error:
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def refattn_deviations(request, refattn_impl):
    """Invariant ID -> reason: the adapter's declared deviations and those of the file."""
    from refattn.spec.conform import read_deviations

    deviations = dict(refattn_impl.deviations)
    path = request.config.getoption("--refattn-deviations")
    if path:
        deviations.update(read_deviations(path))
    return deviations
