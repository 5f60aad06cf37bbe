"""`refattn bench`: the grid, the FLOP counts, the command line and the report's schema.

Nothing here judges a time: the tiny run checks the shape of the report, never its numbers.
"""

import importlib.util
import io
import json
import time
from dataclasses import replace

import numpy as np
import pytest

from refattn import adapters, masks, reference
from refattn.adapters import Adapter, Prepared, naive
from refattn.bench import cases as grid
from refattn.bench import measure, run
from refattn.bench.cases import Case, parse_shape, visible_pairs
from refattn.call import Result
from refattn.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


# ------------------------------------------------------------------------------------ the grid


@pytest.mark.parametrize(
    ("text", "shape"),
    [("1,8,1024,64", (1, 8, 1024, 1024, 64)), ("1,32,1,4096,128", (1, 32, 1, 4096, 128))],
)
def test_parse_shape(text, shape):
    assert parse_shape(text) == shape


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("1,8,64", "B,H,Lq,Lk,D"),
        ("1,8,1024,64,1,1", "B,H,Lq,Lk,D"),
        ("1,8,x,64", "whole numbers"),
        ("1,0,16,64", "at least 1"),
    ],
)
def test_parse_shape_rejects(text, says):
    with pytest.raises(ValueError, match=says):
        parse_shape(text)


def test_default_grid_holds_issue_8_shapes():
    cases = grid.default_cases()
    for B, H, Lq, Lk, D in grid.ISSUE8_SHAPES:
        causal_options = (False,) if Lq == 1 else (False, True)
        for causal in causal_options:
            assert Case(B, H, Lq, Lk, D, causal=causal) in cases, (B, H, Lq, Lk, D, causal)
    sweep = {(c.Lq, c.D) for c in cases if c.B == 1 and c.Lq == c.Lk}
    assert sweep >= {(n, d) for n in (128, 8192) for d in (64, 128)}
    assert len(cases) == len(set(cases)), "no case twice"
    assert (1, 8, 16384, 16384, 64) in grid.MEMORY_SHAPES


def test_decode_is_timed_non_causal_in_both_mode():
    cases = grid.cases_for([(1, 32, 1, 4096, 128), (1, 8, 16, 16, 8)], causal="both")
    assert [(c.Lq, c.causal) for c in cases] == [(1, False), (16, False), (16, True)]
    assert grid.cases_for([(1, 32, 1, 4096, 128)], causal="yes")[0].causal


@pytest.mark.parametrize(("Lq", "Lk"), [(1, 1), (5, 5), (3, 8), (8, 3), (1, 9), (7, 7)])
def test_visible_pairs_count_the_bottom_right_causal_mask(Lq, Lk):
    expected = int(masks.causal_mask(Lq, Lk, "bottom_right").sum())
    assert visible_pairs(Lq, Lk, causal=True) == expected
    assert visible_pairs(Lq, Lk, causal=False) == Lq * Lk


def test_flops():
    full = Case(1, 8, 1024, 1024, 64)
    assert full.flops == 4 * 8 * 1024 * 1024 * 64 == 2**31
    causal = replace(full, causal=True)
    assert causal.visible_pairs == 1024 * 1025 // 2
    assert causal.flops == 4 * 8 * (1024 * 1025 // 2) * 64
    decode = Case(1, 32, 1, 4096, 128)
    assert decode.flops == 4 * 32 * 4096 * 128
    assert decode.kv_bytes == 2 * 32 * 4096 * 128 * 4
    assert Case(1, 1, 1, 8, 8, dtype="float64").kv_bytes == 2 * 8 * 8 * 8


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("Lq", "Lk"), [(6, 6), (3, 7)])
def test_naive_numpy_computes_attention(causal, Lq, Lk):
    q, k, v = Case(2, 3, Lq, Lk, 8, causal=causal).inputs(seed=1)
    got = naive.naive_attention(q, k, v, causal=causal)
    want = reference.attention(q, k, v, causal="bottom_right" if causal else None)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_skips_what_does_not_fit_and_what_the_default_grid_cannot_afford():
    long = Case(1, 8, 16384, 16384, 64)
    impls = {name: adapters.load(name) for name in ("numpy", "native")}
    skips = run.plan_skips([long], impls, default_grid=False, available=2**33)
    assert "would need ≈ 25.7 GiB (≈ 3.2 arrays" in skips[long.id]["numpy"]
    assert "native" not in skips[long.id]  # it streams: nothing to estimate
    big = Case(1, 8, 8192, 8192, 64)
    numpy = {"numpy": impls["numpy"]}
    skips = run.plan_skips([big], numpy, default_grid=True, available=2**40)
    assert "the default grid times numpy up to" in skips[big.id]["numpy"]
    assert run.plan_skips([big], numpy, default_grid=False, available=2**40) == {}


def test_long_calls_are_timed_in_fewer_rounds(monkeypatch):
    """A call of PRIME_BELOW_S or more is one call a sample, in LONG_ROUNDS rounds; a short one
    is timed in every round, interleaved with it. A sample after one of an implementation named
    in SETTLE_AFTER (its threads spin on) waits that long; the others wait SETTLE_S."""
    monkeypatch.setattr(measure, "PRIME_BELOW_S", 0.02)
    monkeypatch.setattr(measure, "SETTLE_S", 0.0)
    monkeypatch.setattr(measure, "SETTLE_AFTER", {"slow": 0.001})
    pauses = []
    monkeypatch.setattr(measure.time, "sleep", pauses.append)
    case = Case(1, 1, 4, 4, 8)

    def busy(name, seconds):
        def prepare(call):
            def run():
                end = time.perf_counter() + seconds
                while time.perf_counter() < end:  # busy: time.sleep records pauses here
                    pass
                return reference.attention(call.query, call.key, call.value)

            return Prepared(run, lambda out: Result(out, None, None))

        return Adapter(name, prepare)

    progress = {"done": 0, "total": 0}
    found = measure.time_case(
        case, {"slow": busy("slow", 0.03), "quick": busy("quick", 0.0)}, 5, io.StringIO(), progress
    )
    assert found["slow"]["calls_per_sample"] == 1
    assert len(found["slow"]["samples_ms"]) == measure.LONG_ROUNDS < 5
    assert len(found["quick"]["samples_ms"]) == 5
    # rounds 1-3 time slow, then quick (two names: rotating and turning round agree), so
    # quick's samples there wait the longer pause; rounds 4-5 time quick alone
    assert pauses.count(0.001) == measure.LONG_ROUNDS
    assert len(pauses) == measure.LONG_ROUNDS + 5


# ---------------------------------------------------------------------------- command line


def _bench(argv, capsys):
    status = main(["bench", *argv])
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--impls", "numpy,nosuch"], "or module.path:function, but got 'nosuch'"),
        (["--impls", "numpy", "--repeat", "0"], "--repeat should be at least 1"),
        (["--impls", "numpy", "--threads", "0"], "--threads should be at least 1"),
    ],
)
def test_usage_errors_exit_2(argv, says, capsys):
    status, err = _bench(argv, capsys)
    assert status == 2 and says in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--shapes", "1,8,x,64"],
        ["--shapes", "1,8,64"],
        ["--causal", "maybe"],
        ["--dtype", "int8"],
    ],
)
def test_argument_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", *argv])
    assert exit_.value.code == 2
    assert "refattn bench: error: argument" in capsys.readouterr().err


def test_a_missing_peer_is_named_with_its_extra(monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # import torch fails
    status, err = _bench(["--impls", "numpy,torch"], capsys)
    assert status == 2
    assert "torch needs torch, which is not installed: pip install 'refattn[torch]'" in err


def test_native_not_importable_fails_clearly(monkeypatch, capsys):
    def broken(threads=None):
        raise ImportError("cannot import name '_native' from 'refattn'")

    monkeypatch.setitem(adapters.BUILTIN, "native", broken)
    for argv in ([], ["--impls", "native,numpy"]):
        status, err = _bench(argv, capsys)
        assert status == 2
        assert "native: the implementation is not importable (cannot import name '_native'" in err
        assert "--impls reference,numpy,torch,onnxruntime,jax" in err


def test_bench_times_what_conform_loads():
    """One registry: any name `refattn conform` loads is one `refattn bench --impls` takes."""
    chosen = run.choose_impls(["native:scalar", "numpy"])
    assert list(chosen) == ["numpy", "native:scalar"]
    assert all(isinstance(impl, Adapter) for impl in chosen.values())


def test_plot_without_matplotlib_fails_before_running(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    status, err = _bench(["--impls", "numpy", "--plot", str(tmp_path / "p.png")], capsys)
    assert status == 2 and "pip install 'refattn[plot]'" in err


# ---------------------------------------------------------------------------- a tiny run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny run, reported as JSON and drawn: numpy and reference, one round."""
    tmp = tmp_path_factory.mktemp("bench")
    paths = {"json": tmp / "bench.json", "plot": tmp / "bench.png"}
    messages = []

    class Err:
        def write(self, text):
            messages.append(text)

        def flush(self):
            pass

    document = run.bench(
        shapes=[(1, 2, 16, 16, 8), (1, 2, 32, 32, 8), (1, 1, 1, 64, 8)],
        impls=["numpy", "reference"],
        repeat=1,
        memory_shapes=[(1, 1, 8, 8, 8)],
        json_path=str(paths["json"]),
        plot_path=str(paths["plot"]) if HAS_MATPLOTLIB else None,
        limits=(64, (256, 64)),
        out=Err(),
        err=Err(),
    )
    return document, paths, "".join(messages)


def test_tiny_run_writes_the_documented_json(tiny_run):
    document, paths, messages = tiny_run
    saved = json.loads(paths["json"].read_text())
    assert saved == json.loads(json.dumps(document))
    assert saved["schema"] == "refattn-bench/1"
    assert set(saved) >= {"created", "command", "elapsed_s", "settings", "machine"}
    assert saved["settings"]["repeat"] == 1 and saved["settings"]["threads"] >= 1
    assert "visible pairs" in saved["settings"]["flops_counted"]
    machine = saved["machine"]
    for limit in ("matmul_peak_gflops", "stream_read_gbps"):
        assert machine[limit]["min"] <= machine[limit]["median"] <= machine[limit]["max"]
        assert len(machine[limit]["samples"]) == 6  # at the start and at the end
    assert "64×64" in machine["matmul_peak_gflops"]["how"]
    assert {"cpu_s", "percent_of_machine"} <= set(machine["busy_elsewhere"])
    assert set(saved["implementations"]) == {"numpy", "reference"}
    assert "OPENBLAS_NUM_THREADS" in saved["implementations"]["numpy"]["threads"]

    ids = [c["id"] for c in saved["cases"]]
    assert ids == [
        "B1-H2-Lq16-Lk16-D8-full-float32",
        "B1-H2-Lq16-Lk16-D8-causal-float32",
        "B1-H2-Lq32-Lk32-D8-full-float32",
        "B1-H2-Lq32-Lk32-D8-causal-float32",
        "B1-H1-Lq1-Lk64-D8-full-float32",
    ]
    causal = saved["cases"][1]
    assert causal["visible_pairs"] == 16 * 17 // 2
    assert causal["flops"] == 4 * 2 * 136 * 8
    for case in saved["cases"]:
        assert case["native_speedup"] == {}  # no native in this run
        for result in case["results"].values():
            assert result["status"] == "ok"
            ms = result["ms"]
            assert 0 < ms["min"] <= ms["median"] <= ms["max"]
            assert len(result["samples_ms"]) == 1 and result["calls_per_sample"] >= 1
            assert result["max_abs_error"] < 1e-5
            seconds = ms["median"] / 1e3
            assert result["gflops"] == pytest.approx(case["flops"] / seconds / 1e9)
            assert ("gbps" in result) == case["decode"]
    decode = saved["cases"][-1]["results"]["numpy"]
    assert decode["gbps"] == pytest.approx(2 * 64 * 8 * 4 / (decode["ms"]["median"] / 1e3) / 1e9)

    assert [m["impl"] for m in saved["memory"]] == ["reference", "numpy"]  # IMPLS order
    for entry in saved["memory"]:
        assert entry["status"] == "ok" and entry["case"]["Lq"] == 8
        assert entry["peak_mib"] >= entry["ready_mib"] and entry["baseline_mib"] > 0
        assert entry["beyond_inputs_outputs_mib"] == pytest.approx(
            entry["peak_over_baseline_mib"] - entry["inputs_mib"] - entry["output_mib"]
        )
    assert "timing [" in messages and "memory [" in messages  # progress went to err


def test_tiny_run_table_shows_every_case(tiny_run):
    document, _, _ = tiny_run
    text = run.report.table(document)
    for case in document["cases"]:
        assert case["label"] in text
    assert "matmul peak" in text and "streaming read" in text and "peak memory" in text


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="the plot needs the `plot` extra")
def test_tiny_run_plot_is_a_png(tiny_run, tmp_path, capsys):
    _, paths, _ = tiny_run
    image = paths["plot"].read_bytes()
    assert image.startswith(PNG_SIGNATURE) and len(image) > 10_000
    again = tmp_path / "again.png"
    assert main(["plot", "bench", str(paths["json"]), "--out", str(again)]) == 0
    assert again.read_bytes().startswith(PNG_SIGNATURE)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["plot", "bench", str(bad), "--out", str(again)]) == 2
    assert "not a `refattn bench --json` file" in capsys.readouterr().err


def test_backward_run_times_the_gradients(capsys):
    """--backward: each implementation's gradients are checked (dQ of a few rows against the
    spec), timed and measured; one without a backward is skipped, saying so."""
    document = run.bench(
        shapes=[(1, 2, 16, 16, 8)],
        causal="yes",
        impls=["native", "numpy"],
        repeat=1,
        memory_shapes=[(1, 1, 8, 8, 8)],
        backward=True,
        limits=(64, (256, 64)),
    )
    assert document["settings"]["backward"] is True
    assert document["settings"]["flops_counted"].startswith("14·B·H·pairs·D")
    (case,) = document["cases"]
    native, numpy = case["results"]["native"], case["results"]["numpy"]
    assert native["status"] == "ok" and native["max_abs_error"] < 1e-5
    seconds = native["ms"]["median"] / 1e3
    assert native["gflops"] == pytest.approx(14 * 2 * 136 * 8 / seconds / 1e9)
    assert numpy["status"] == "skipped" and "does not claim backward" in numpy["reason"]
    memory = document["memory"][0]
    assert memory["impl"] == "native" and memory["status"] == "ok"
    inputs = 4 * 8 * 8 * 4  # q, k, v and dO, (1, 1, 8, 8) float32
    assert memory["inputs_mib"] == pytest.approx(inputs / 2**20)
    assert "forward + backward" in capsys.readouterr().out


def test_backward_check_refuses_wrong_gradients():
    """A backward whose dQ is off by 1% is not timed: the check against the spec fails."""
    import dataclasses

    from refattn.adapters import Prepared, load
    from refattn.bench import measure
    from refattn.bench.cases import Case

    native = load("native")

    def off(call, grad_out, grad_lse):
        prepared = native.prepare_backward(call, grad_out, grad_lse)

        def output(returned):
            gradients = prepared.output(returned)
            return gradients._replace(query=1.01 * gradients.query)

        return Prepared(prepared.run, output)

    case = Case(1, 2, 16, 16, 8)
    call, rows, grad_out = case.call(), measure.check_rows(case), case.upstream()
    expected = measure.expected_rows(case, call, rows, grad_out)
    wrong = dataclasses.replace(native, prepare_backward=off)
    prepared, result, _ = measure.make_ready(wrong, call, expected, rows, grad_out)
    assert prepared is None and result["status"] == "failed"
    assert "dquery: max error" in result["reason"]
    prepared, result, _ = measure.make_ready(native, call, expected, rows, grad_out)
    assert prepared is not None and result["status"] == "ok"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_run_times_its_dtype_and_names_its_peak(dtype):
    """--dtype bfloat16 or float16: inputs in that dtype (ml_dtypes arrays for bfloat16),
    checked against the spec's low-precision model; the matmul peak is torch.mm's in that dtype
    where torch is installed (NumPy has no gemm for either), the read bandwidth NumPy's float32
    gemv."""
    document = run.bench(
        shapes=[(1, 2, 64, 64, 32)],
        causal="no",
        dtype=dtype,
        impls=["native", "numpy"],
        repeat=1,
        memory_shapes=[(1, 1, 8, 8, 8)],
        limits=(64, (256, 64)),
    )
    assert document["settings"]["dtype"] == dtype
    (case,) = document["cases"]
    assert case["dtype"] == dtype
    native, numpy = case["results"]["native"], case["results"]["numpy"]
    assert native["status"] == "ok", native
    assert numpy["status"] == "skipped" and f"does not claim {dtype}" in numpy["reason"]
    memory = document["memory"][0]
    assert memory["inputs_mib"] == pytest.approx(3 * 8 * 8 * 2 / 2**20)  # 2 bytes an element
    machine = document["machine"]
    how = machine["matmul_peak_gflops"]["how"]
    try:
        import torch  # noqa: F401

        assert how.startswith(f"torch.mm {dtype}"), how
    except ImportError:
        assert how.startswith("NumPy float32 matmul"), how
    assert "float32 matrix-vector" in machine["stream_read_gbps"]["how"]
