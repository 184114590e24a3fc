"""The CPU synaptic-noise generator: equal to the values of its first version (pinned) to float32
rounding of torch's log/cos, compiled (C Philox) and fallback (numpy) bit for bit alike, and usable
on a machine without a C compiler."""

from __future__ import annotations

import json
import os

import pytest
import torch

from bionic_sparse import _native, noise

PINNED = os.path.join(os.path.dirname(__file__), "data", "noise_pinned.json")


def _pinned() -> dict:
    with open(PINNED) as f:
        return json.load(f)


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """A native-helper state of its own (restored afterwards): builds go to ``tmp_path``."""
    monkeypatch.setenv(_native.ENV_CACHE, str(tmp_path / "cache"))
    _native.reset()
    yield
    _native.reset()


# The pinned values were made on an AMD EPYC. Box-Muller runs in torch's float32 log/sqrt/cos, which
# call MKL's vector maths, and MKL takes another code path on Intel CPUs: on an Intel Xeon (AVX-512)
# 141 of the 768 values are 1-2 ulps away (the Philox words and uniforms are integer maths, exact
# everywhere). A wrong counter, key or uniform changes a value completely, so a few ulps still pin
# the generator; on the CPU kind they were made on they are equal bit for bit.
PINNED_ULPS = 4


def _ulps(got: torch.Tensor, bits: list[int]) -> int:
    """Largest distance in float32 ulps between ``got`` and the pinned bit patterns (same signs)."""
    ints = got.view(torch.int32).to(torch.int64)
    pinned = torch.tensor(bits, dtype=torch.int64)
    if not torch.equal(ints < 0, pinned < 0):
        return 2**31
    return int((ints - pinned).abs().max())


@pytest.mark.parametrize("impl", ["native", "numpy"])
def test_normals_equal_the_pinned_values(monkeypatch, impl):
    pinned = _pinned()
    offsets = torch.tensor(pinned["offsets"])
    monkeypatch.setenv(noise.ENV_NOISE, impl)
    assert len(pinned["cases"]) * offsets.numel() >= 500
    for case in pinned["cases"]:
        assert _ulps(noise.synapse_randn(case["seed"], offsets), case["bits"]) <= PINNED_ULPS, f"seed {case['seed']}"


def test_native_and_numpy_agree_bit_for_bit_on_many_ids(monkeypatch):
    ids = torch.cat(
        [torch.arange(300_001), torch.randint(0, 2**31 - 1, (5000,), generator=torch.Generator().manual_seed(1))]
    )
    monkeypatch.setenv(noise.ENV_NOISE, "native")
    a = noise.synapse_randn(2**40 + 9, ids)
    monkeypatch.setenv(noise.ENV_NOISE, "numpy")
    b = noise.synapse_randn(2**40 + 9, ids)
    assert torch.equal(a.view(torch.int32), b.view(torch.int32))


def test_synapse_noise_at_equals_the_full_draw_at_those_ids():
    full = noise.synapse_noise(77, 9, 16).reshape(-1)
    ids = torch.tensor([0, 5, 100, 2303, 17, 999])
    assert torch.equal(noise.synapse_noise_at(77, ids), full[ids])


def test_without_a_c_compiler_the_numpy_generator_runs(monkeypatch, fresh_native):
    monkeypatch.setenv(_native.ENV_CC, "")  # as on a machine without cc/gcc/clang
    monkeypatch.delenv(noise.ENV_NOISE, raising=False)
    assert noise.generator_impl() == "numpy"
    assert "no C compiler" in _native.build_error()
    pinned = _pinned()
    case = pinned["cases"][0]
    assert _ulps(noise.synapse_randn(case["seed"], torch.tensor(pinned["offsets"])), case["bits"]) <= PINNED_ULPS
    monkeypatch.setenv(noise.ENV_NOISE, "native")
    with pytest.raises(RuntimeError, match="compiled generator is unavailable"):
        noise.generator_impl()


def test_the_native_build_goes_to_the_cache_once(monkeypatch, fresh_native, tmp_path):
    monkeypatch.delenv(_native.ENV_CC, raising=False)
    if _native.philox_uniforms() is None:
        pytest.skip(f"no compiled generator here: {_native.build_error()}")
    built = list((tmp_path / "cache").glob("philox-*.so"))
    assert len(built) == 1
    _native.reset()
    assert _native.philox_uniforms() is not None and list((tmp_path / "cache").glob("philox-*.so")) == built


@pytest.mark.parametrize("threads", [1, 2])
def test_chunked_full_draw_equals_the_draw_by_ids(monkeypatch, threads):
    """``synapse_noise`` draws a contiguous range chunk by chunk (ids, uniforms and Box-Muller in
    cache): the same bits as the draw over ``arange(n)``, with a last chunk that is not full."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    n = 3 * noise._NATIVE_CHUNK + 37
    noise._recent_noise.clear()
    full = noise.synapse_noise(2**33 + 5, n, 1).reshape(-1)
    by_ids = noise.synapse_randn(2**33 + 5, torch.arange(n))
    assert torch.equal(full.view(torch.int32), by_ids.view(torch.int32))
    noise._recent_noise.clear()
