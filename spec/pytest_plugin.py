"""pytest plugin: run the spec against an implementation inside any test suite.

    pytest --pyargs refattn.spec --refattn-impl mypkg.attention:my_sdpa

collects refattn/spec/test_conformance.py: one test per invariant, its ID in the test id. A
missing capability is a skip; a declared deviation (the adapter's own, or one in
--refattn-deviations) is an expected failure: xfailed when it fails, xpassed when it does not. A
SHOULD that fails is xfailed too (reported, not required), unless --refattn-strict.

There is no default implementation: collecting the conformance tests without one is a usage
error, so a run can never pass without calling the function it was meant to check. Every option
has an ini twin (`refattn_impl = mypkg.attention:my_sdpa` in [tool.pytest.ini_options]); a
deviations file named there is read relative to the configuration file, one on the command line
relative to the directory pytest was started in. The run's header names the implementation, its
capabilities, the seed and the examples; the defaults (seed 0, 100 examples) are those of
`refattn conform`, so both give the same counterexamples.

Kept light: it is loaded by every pytest run of an environment where refattn is installed, and
does nothing unless its options are used or its tests collected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

_CONFORMANCE_FILE = (Path(__file__).parent / "test_conformance.py").resolve()
_OPTIONS = {  # option name -> (ini name, what it is)
    "impl": ("refattn_impl", "implementation the spec's tests check (as for `refattn conform`)"),
    "deviations": (
        "refattn_deviations",
        "known deviations, one ID per line then '# reason' (as for `refattn conform`)",
    ),
    "max_examples": ("refattn_max_examples", "hypothesis examples per invariant (default 100)"),
    "seed": ("refattn_seed", "hypothesis seed (default 0, as refattn conform)"),
    "protocol": (
        "refattn_protocol",
        "your function's protocol, sdpa or refattn (default: read off its signature)",
    ),
    "with": ("refattn_with", "capabilities beyond its signature, comma-separated (bfloat16, ...)"),
    "without": ("refattn_without", "capabilities to leave out, comma-separated (float64, ...)"),
    "semantics": (
        "refattn_semantics",
        "your function's choices where the spec chooses, "
        "name=value,... (fully_masked=mean, mask_fill=-1e9, ...)",
    ),
    "framework": ("refattn_framework", "the arrays your function takes: numpy, torch or jax"),
    "device": ("refattn_device", "where its arrays live: cpu (the default), cuda, mps, ..."),
}


def pytest_addoption(parser):
    group = parser.getgroup("refattn", "refattn spec conformance")
    group.addoption("--refattn-impl", metavar="IMPL", help=_OPTIONS["impl"][1])
    group.addoption("--refattn-deviations", metavar="FILE", help=_OPTIONS["deviations"][1])
    group.addoption("--refattn-max-examples", metavar="N", help=_OPTIONS["max_examples"][1])
    group.addoption("--refattn-seed", metavar="N", help=_OPTIONS["seed"][1])
    group.addoption("--refattn-protocol", metavar="NAME", help=_OPTIONS["protocol"][1])
    group.addoption("--refattn-with", metavar="CAP,...", help=_OPTIONS["with"][1])
    group.addoption("--refattn-without", metavar="CAP,...", help=_OPTIONS["without"][1])
    group.addoption("--refattn-semantics", metavar="NAME=VALUE,...", help=_OPTIONS["semantics"][1])
    group.addoption("--refattn-framework", metavar="NAME", help=_OPTIONS["framework"][1])
    group.addoption("--refattn-device", metavar="DEVICE", help=_OPTIONS["device"][1])
    group.addoption(
        "--refattn-strict",
        action="store_true",
        default=None,
        help="a failing SHOULD fails its test (default: xfailed, reported, not required)",
    )
    for ini, what in _OPTIONS.values():
        parser.addini(ini, what)
    parser.addini("refattn_strict", "a failing SHOULD fails its test", type="bool", default=False)


@dataclass(frozen=True)
class Settings:
    """What the conformance tests of this run check, and how."""

    impl: str | None
    deviations: Path | None
    deviations_option: str
    max_examples: int
    seed: int
    strict: bool
    declared: dict  # load()'s protocol, with_, without


def settings(config) -> Settings:
    """The run's settings: the command line over the ini file over refattn conform's defaults."""
    from refattn.spec.runner import DEFAULT_MAX_EXAMPLES, DEFAULT_SEED

    def given(name):
        flag = "--refattn-" + name.replace("_", "-")
        value = config.getoption(flag)
        if value is not None:
            return value, flag, Path(config.invocation_params.dir)
        value = config.getini(_OPTIONS[name][0]) if name in _OPTIONS else None
        base = Path(config.inipath).parent if config.inipath else Path(config.rootpath)
        return (value or None), _OPTIONS[name][0], base

    impl, _, _ = given("impl")
    path, deviations_option, base = given("deviations")
    strict = config.getoption("--refattn-strict")
    return Settings(
        impl=impl,
        deviations=None if path is None else base / path,
        deviations_option=deviations_option,
        max_examples=_whole(given("max_examples"), DEFAULT_MAX_EXAMPLES, low=1),
        seed=_whole(given("seed"), DEFAULT_SEED, low=0),
        strict=config.getini("refattn_strict") if strict is None else strict,
        declared={
            "protocol": given("protocol")[0],
            "with_": _names(given("with")[0]),
            "without": _names(given("without")[0]),
            "semantics": given("semantics")[0],
            "framework": given("framework")[0],
            "device": given("device")[0],
        },
    )


def _names(text) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def _whole(found, default: int, *, low: int) -> int:
    value, option, _ = found
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise pytest.UsageError(f"{option} should be a whole number, but got {value!r}") from None
    if number < low:
        raise pytest.UsageError(f"{option} should be at least {low}, but got {number}")
    return number


def pytest_configure(config):
    config.refattn_settings = settings(config)  # bad options stop the run here, clearly
    if config.refattn_settings.deviations is not None:
        _deviations_file(config.refattn_settings)


def pytest_report_header(config):
    chosen = config.refattn_settings
    if chosen.impl is None:
        return None
    impl = _load(chosen.impl, chosen.declared)
    lines = [
        f"refattn: checking {impl.name} against the spec, seed {chosen.seed}, "
        f"{chosen.max_examples} examples per invariant"
        + (", SHOULD required (strict)" if chosen.strict else ""),
        f"refattn: capabilities {', '.join(sorted(impl.capabilities))}",
        f"refattn: semantics {impl.semantics}",
    ]
    if chosen.deviations is not None:
        lines.append(f"refattn: deviations from {chosen.deviations}")
    return lines


def pytest_collection_modifyitems(session, config, items):
    conformance = [item for item in items if _is_refattns(item)]
    if conformance and config.refattn_settings.impl is None:
        raise pytest.UsageError(
            "refattn's conformance tests were collected, but no implementation is named: "
            "pass --refattn-impl module.path:function (or set refattn_impl in the [pytest] "
            "section of your configuration). Nothing is checked by default."
        )


def _is_refattns(item) -> bool:
    """Is the item one of refattn's conformance tests, collected from refattn.spec or imported
    into a user's test file (`from refattn.spec.test_conformance import test_invariant`)?"""
    function = getattr(item, "function", None)
    code = getattr(function, "__code__", None)
    return code is not None and Path(code.co_filename).resolve() == _CONFORMANCE_FILE


def _load(name: str, declared: dict):
    from refattn.adapters import ImplementationNotFound, PeerNotInstalled, load

    try:
        return load(name, **declared)
    except (ImplementationNotFound, PeerNotInstalled, TypeError, ValueError) as error:
        raise pytest.UsageError(f"--refattn-impl: {error}") from None


def _deviations_file(chosen: Settings) -> dict[str, str]:
    from refattn.spec.conform import UsageError, read_deviations

    try:
        return read_deviations(chosen.deviations, option=chosen.deviations_option)
    except UsageError as error:
        raise pytest.UsageError(str(error)) from None


@pytest.fixture(scope="session")
def refattn_settings(request) -> Settings:
    """The conformance run's settings (implementation, deviations, examples, seed, strict)."""
    return request.config.refattn_settings


@pytest.fixture(scope="session")
def refattn_impl(refattn_settings):
    """The adapter of the implementation the run checks."""
    from refattn.adapters import PeerNotInstalled

    try:
        return _load(refattn_settings.impl, refattn_settings.declared)
    except PeerNotInstalled as error:
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def refattn_deviations(refattn_settings, refattn_impl):
    """Invariant ID -> reason: the adapter's declared deviations and those of the file."""
    deviations = dict(refattn_impl.deviations)
    if refattn_settings.deviations is not None:
        deviations.update(_deviations_file(refattn_settings))
    return deviations
