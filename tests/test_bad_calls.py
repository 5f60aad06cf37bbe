"""Bad input to any entry point gets a clear error; odd but legitimate input the right answer.

The tables are in tests/bad_calls.py. Every bad call is made against each entry point its row
names (the attention rows against both the native core and the reference) and must raise the
row's error with a message naming the argument and saying what was expected and what came in.
"""

import re

import numpy as np
import pytest
from bad_calls import BAD_CALLS, LEGIT_CALLS, _key, _value
from refattn.spec.tolerance import expect

import refattn
from refattn import KVCache, MHAParams, merge_partials, multi_head_attention, reference


def _kv_cache_append(key, value):
    cache = KVCache()
    cache.append(_key, _value)
    try:
        cache.append(key, value)
    finally:
        # the refused append left the cache as it was
        assert cache.length == 1
        assert np.array_equal(cache.key, _key) and np.array_equal(cache.value, _value)


def _mha(attention):
    def call(x, context, **options):
        cache = options.get("kv_cache")
        length = cache.length if isinstance(cache, KVCache) else None
        try:
            multi_head_attention(x, context, **{"attention": attention, **options})
        finally:
            if length is not None:
                # a call that raised appended nothing to the cache
                assert cache.length == length

    return call


def _attention(impl):
    def call(*args, **options):
        impl(*args, **options)

    return call


ENTRY_POINTS = {
    "attention": {
        "native": _attention(refattn.attention),
        "reference": _attention(reference.attention),
    },
    "native": {"native": _attention(refattn.attention)},
    "merge_partials": {"merge_partials": merge_partials},
    "mha": {"mha-reference": _mha(reference.attention), "mha-native": _mha(refattn.attention)},
    "kv_cache": {"KVCache.append": _kv_cache_append},
    "mha_params": {"MHAParams.init": MHAParams.init},
}
CASES = [
    pytest.param(bad, call, id=f"{where}: {bad.name}")
    for bad in BAD_CALLS
    for where, call in ENTRY_POINTS[bad.entry].items()
]


def test_the_tables_cover_every_entry_point():
    """Count of bad inputs tried: one per (entry point, bad call)."""
    entries = {bad.entry for bad in BAD_CALLS}
    assert entries == set(ENTRY_POINTS)
    assert len(CASES) >= 200, len(CASES)


@pytest.mark.parametrize(("bad", "call"), CASES)
def test_bad_call_is_refused_clearly(bad, call):
    with pytest.raises(bad.error) as raised:
        call(*bad.args, **bad.options)
    message = str(raised.value)
    for fragment in bad.says:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    # the style of every message: '<argument> should be <expected>, but got <actual>'
    assert re.search(r"should (be|have|hold)", message), message


@pytest.mark.parametrize("legit", LEGIT_CALLS, ids=[legit.name for legit in LEGIT_CALLS])
@pytest.mark.parametrize(
    "impl", [refattn.attention, reference.attention], ids=["native", "reference"]
)
def test_legitimate_odd_input_gets_the_right_answer(legit, impl):
    """Compared with the float64 reference on contiguous copies, within the tolerance model."""
    plain = legit.plain or tuple(np.array(x) for x in legit.args)
    got = impl(*legit.args, return_lse=True, return_weights=True, **legit.options)
    assert got[0].dtype == legit.args[0].dtype
    assert expect(*plain, **legit.options).problems(*got) == []
