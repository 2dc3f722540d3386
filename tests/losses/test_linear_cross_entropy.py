"""linear_cross_entropy (chunked, custom autograd) against the naive path F.linear + cross_entropy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import losslab.losses as L
from losslab import ConfigError, DataError

D = torch.float64


def _setup(n=11, h=6, v=13, seed=0, dtype=D, ignore=True):
    g = torch.Generator().manual_seed(seed)
    hid = torch.randn(n, h, generator=g, dtype=D).to(dtype)
    w = (torch.randn(v, h, generator=g, dtype=D) * 0.7).to(dtype)
    b = (torch.randn(v, generator=g, dtype=D) * 0.1).to(dtype)
    t = torch.randint(0, v, (n,), generator=g)
    if ignore:
        t[[2, 7]] = -100
    return hid, w, b, t


def _both(hid, w, b, t, reduction, chunk, use_bias, **kw):
    leaves_a = [x.clone().requires_grad_(True) for x in (hid, w, b)]
    leaves_b = [x.clone().requires_grad_(True) for x in (hid, w, b)]
    ha, wa, ba = leaves_a
    hb, wb, bb = leaves_b
    cw = kw.pop("class_weight", None)
    fused = L.linear_cross_entropy(ha, wa, t, bias=ba if use_bias else None, reduction=reduction, chunk_size=chunk,
                                   class_weight=cw, **kw)
    naive = L.cross_entropy(F.linear(hb, wb, bb if use_bias else None), t, reduction=reduction, weight=cw, **kw)
    gout = torch.linspace(0.5, 1.5, fused.numel(), dtype=fused.dtype).reshape(fused.shape)
    (fused * gout).sum().backward()
    (naive * gout).sum().backward()
    return fused, naive, leaves_a, leaves_b, use_bias


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk", [1, 4, 64])
@pytest.mark.parametrize("options", [
    {},
    {"z_loss": 1e-4},
    {"z_loss": 0.05, "label_smoothing": 0.1},
    {"logit_softcap": 2.0, "z_loss": 0.01},
    {"label_smoothing": 0.2, "class_weight": torch.linspace(0.2, 2.0, 13, dtype=D), "z_loss": 0.02},
])
def test_matches_naive_path_values_and_gradients(reduction, chunk, options):
    hid, w, b, t = _setup()
    fused, naive, la, lb, _ = _both(hid, w, b, t, reduction, chunk, True, **dict(options))
    torch.testing.assert_close(fused, naive, atol=1e-12, rtol=1e-12)
    for a, c in zip(la, lb):
        torch.testing.assert_close(a.grad, c.grad, atol=1e-12, rtol=1e-12)


def test_float32_matches_naive_to_float_tolerance_and_3d_hidden():
    hid, w, _, t = _setup(n=24, v=50, dtype=torch.float32, ignore=False)
    hid3, t3 = hid.reshape(4, 6, 6), t.reshape(4, 6)
    a = hid3.clone().requires_grad_(True)
    fused = L.linear_cross_entropy(a, w, t3, z_loss=1e-4, chunk_size=5)
    naive = L.cross_entropy(F.linear(hid, w), t, z_loss=1e-4)
    torch.testing.assert_close(fused, naive, atol=1e-6, rtol=1e-6)
    fused.backward()
    ref = hid.clone().requires_grad_(True)
    L.cross_entropy(F.linear(ref, w), t, z_loss=1e-4).backward()
    torch.testing.assert_close(a.grad.reshape(24, 6), ref.grad, atol=1e-6, rtol=1e-5)
    none = L.linear_cross_entropy(hid3, w, t3, reduction="none")
    assert none.shape == (4, 6)


def test_return_z_loss_and_default_chunk():
    hid, w, _, t = _setup()
    loss, z = L.linear_cross_entropy(hid, w, t, z_loss=1e-3, return_z_loss=True)
    ref, zr = L.cross_entropy(hid @ w.T, t, z_loss=1e-3, return_z_loss=True)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(z, zr)
    assert not z.requires_grad


def test_bfloat16_inputs_accumulate_in_float32():
    hid, w, _, t = _setup(n=32, v=40, dtype=torch.bfloat16, ignore=False)
    hb, wb = hid.clone().requires_grad_(True), w.clone().requires_grad_(True)
    loss = L.linear_cross_entropy(hb, wb, t, z_loss=1e-4, chunk_size=8)
    assert loss.dtype == torch.float32
    loss.backward()
    assert hb.grad.dtype == torch.bfloat16 and wb.grad.dtype == torch.bfloat16
    h64, w64 = hid.double().requires_grad_(True), w.double().requires_grad_(True)
    ref = L.cross_entropy(h64 @ w64.T, t, z_loss=1e-4)
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(wb.grad.double(), w64.grad, atol=2e-2, rtol=5e-2)


def test_second_backward_with_retain_graph_recomputes():
    hid, w, _, t = _setup()
    a = hid.clone().requires_grad_(True)
    loss = L.linear_cross_entropy(a, w, t, z_loss=1e-3, chunk_size=3)
    (g1,) = torch.autograd.grad(loss, a, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, a)
    torch.testing.assert_close(g1, g2)


def test_partial_requires_grad_and_no_grad():
    hid, w, b, t = _setup()
    wl = w.clone().requires_grad_(True)
    L.linear_cross_entropy(hid, wl, t, bias=b).backward()
    ref = w.clone().requires_grad_(True)
    L.cross_entropy(F.linear(hid, ref, b), t).backward()
    torch.testing.assert_close(wl.grad, ref.grad)
    with torch.no_grad():
        out = L.linear_cross_entropy(hid, wl, t)
    assert not out.requires_grad
    torch.testing.assert_close(out, L.cross_entropy(hid @ w.T, t))


def test_bad_inputs():
    hid, w, b, t = _setup()
    with pytest.raises(DataError, match=r"\(V, H\)"):
        L.linear_cross_entropy(hid, w[:, :3], t)
    with pytest.raises(DataError, match="same dtype"):
        L.linear_cross_entropy(hid, w.float(), t)
    with pytest.raises(DataError, match="target must have shape"):
        L.linear_cross_entropy(hid, w, t[:-1])
    with pytest.raises(DataError, match="bias"):
        L.linear_cross_entropy(hid, w, t, bias=b[:-1])
    bad_t = t.clone()
    bad_t[0] = 13
    with pytest.raises(DataError, match="13 classes"):
        L.linear_cross_entropy(hid, w, bad_t)
    with pytest.raises(DataError, match="integer"):
        L.linear_cross_entropy(hid, w, t.double())
    with pytest.raises(ConfigError, match="chunk_size"):
        L.linear_cross_entropy(hid, w, t, chunk_size=0)
    with pytest.raises(ConfigError, match="z_loss"):
        L.linear_cross_entropy(hid, w, t, z_loss=-1.0)
    inf_w = w.clone()
    inf_w[0, 0] = float("inf")
    with pytest.raises(DataError, match="NaN/Inf"):
        L.linear_cross_entropy(hid, inf_w, t)


def test_all_targets_ignored_gives_nan_loss_and_zero_gradients_like_torch():
    hid, w, _, _ = _setup()
    t = torch.full((hid.shape[0],), -100)
    a, b = hid.clone().requires_grad_(True), hid.clone().requires_grad_(True)
    fused = L.linear_cross_entropy(a, w, t, z_loss=1e-3)
    naive = F.cross_entropy(F.linear(b, w), t)
    assert torch.isnan(fused) and torch.isnan(naive)
    fused.backward()
    naive.backward()
    assert torch.equal(a.grad, torch.zeros_like(a.grad)) and torch.equal(b.grad, torch.zeros_like(b.grad))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_ignore_index_none_uses_every_row_like_cross_entropy(reduction):
    # None raised a bare TypeError in torch.where; it means "skip nothing", as in cross_entropy
    hid, w, b, t = _setup(ignore=False)
    fused, naive, la, lb, _ = _both(hid, w, b, t, reduction, 4, True, ignore_index=None, z_loss=1e-2)
    torch.testing.assert_close(fused, naive)
    for a, c in zip(la, lb):
        torch.testing.assert_close(a.grad, c.grad)
    torch.testing.assert_close(L.linear_cross_entropy(hid, w, t, ignore_index=None),
                               L.linear_cross_entropy(hid, w, t, ignore_index=-100))
    with pytest.raises(DataError, match=r"class indices in \[-100"):
        L.linear_cross_entropy(hid, w, _setup()[3], ignore_index=None)  # -100 is now an out-of-range class


@pytest.mark.parametrize("bad", [1.5, -100.0, "-100", True, torch.tensor(-100)])
def test_ignore_index_must_be_an_int_or_none(bad):
    # 1.5 was silently accepted (nothing ignored)
    hid, w, _, t = _setup()
    with pytest.raises(ConfigError, match="ignore_index"):
        L.linear_cross_entropy(hid, w, t, ignore_index=bad)


def test_ignore_index_accepts_numpy_int_and_targets_of_any_integer_dtype():
    hid, w, _, t = _setup()
    ref = L.linear_cross_entropy(hid, w, t, chunk_size=4)
    torch.testing.assert_close(L.linear_cross_entropy(hid, w, t.to(torch.int32), ignore_index=np.int64(-100),
                                                      chunk_size=4), ref)
    t255 = t.clone()
    t255[t255 == -100] = 255
    torch.testing.assert_close(L.linear_cross_entropy(hid, w, t255.to(torch.uint8), ignore_index=255, chunk_size=4),
                               ref)
