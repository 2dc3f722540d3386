"""Continual-learning regularisers, continual backprop (authors' GnT rule) and training-dynamics probes."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from losslab._errors import ConfigError, DataError
from losslab.diagnostics import (
    ContinualBackprop,
    SpectralRegularizer,
    empirical_ntk,
    input_sensitivity,
    kernel_distance,
    l2_init_penalty,
    tangent_alignment,
    wasserstein_init_penalty,
)
from tests.diagnostics.helpers import tiny_mlp


def test_l2_and_wasserstein_penalties_by_hand():
    model = tiny_mlp()
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert float(l2_init_penalty(model, init)) == 0.0
    with torch.no_grad():
        model[0].weight[0, 0] += 2.0
    assert float(l2_init_penalty(model, init)) == pytest.approx(4.0)
    # W2^2 between equal-size samples = min over matchings of squared distances (brute force)
    lin = nn.Linear(5, 1, bias=False).double()
    target = torch.tensor([[0.3, -1.0, 2.0, 0.0, 0.7]], dtype=torch.float64)
    w = lin.weight.detach()[0]
    best = min(sum((float(w[i]) - float(target[0, j])) ** 2 for i, j in enumerate(perm))
               for perm in itertools.permutations(range(5)))
    assert float(wasserstein_init_penalty(lin, {"weight": target})) == pytest.approx(best)
    pen = wasserstein_init_penalty(lin, {"weight": target})
    pen.backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()


def test_spectral_regularizer_exact_power_and_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    exact = SpectralRegularizer(model, exact=True)
    sig = [float(torch.linalg.svdvals(torch.cat([m.weight, m.bias[:, None]], 1))[0]) for m in (model[0], model[2])]
    assert float(exact()) == pytest.approx(sum((s ** 2 - 1) ** 2 for s in sig), rel=1e-10)
    power = SpectralRegularizer(model, seed=3)
    for _ in range(200):
        est = [float(s) for s in power.sigmas()]
    np.testing.assert_allclose(est, sig, rtol=1e-8)
    # gradient of (sigma^2 - 1)^2 = 4 sigma (sigma^2 - 1) u v^T on the augmented matrix
    model.zero_grad()
    SpectralRegularizer(model, exact=True, modules=[model[0]])().backward()
    W = torch.cat([model[0].weight, model[0].bias[:, None]], 1).detach()
    U, S, Vh = torch.linalg.svd(W)
    G = 4 * S[0] * (S[0] ** 2 - 1) * torch.outer(U[:, 0], Vh[0])
    torch.testing.assert_close(model[0].weight.grad, G[:, :4])
    torch.testing.assert_close(model[0].bias.grad, G[:, 4])
    nobias = SpectralRegularizer(model, exact=True, include_bias=False, k=1)
    s0 = float(torch.linalg.svdvals(model[0].weight)[0])
    s2 = float(torch.linalg.svdvals(model[2].weight)[0])
    assert float(nobias()) == pytest.approx((s0 - 1) ** 2 + (s2 - 1) ** 2)


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)).double()


def test_cbp_utility_and_mean_updates_by_hand():
    net = _net()
    cbp = ContinualBackprop([net[0], net[2], net[4]], replacement_rate=0.5, maturity_threshold=100, decay_rate=0.9)
    g = torch.Generator().manual_seed(1)
    u_ref = [torch.zeros(6, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)]
    f_ref = [torch.zeros(6, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)]
    for _ in range(3):
        x = torch.randn(5, 3, generator=g, dtype=torch.float64)
        h1 = torch.relu(net[0](x))
        h2 = torch.relu(net[2](h1))
        net(x)
        assert cbp.step() == [0, 0]  # nobody mature yet
        for i, (h, out) in enumerate(((h1, net[2]), (h2, net[4]))):
            f_ref[i] = 0.9 * f_ref[i] + 0.1 * h.detach().mean(0)
            u_ref[i] = 0.9 * u_ref[i] + 0.1 * out.weight.detach().abs().mean(0) * h.detach().abs().mean(0)
    for i in range(2):
        torch.testing.assert_close(cbp.util[i], u_ref[i])
        torch.testing.assert_close(cbp.mean_act[i], f_ref[i])
        assert cbp.ages[i].tolist() == [3] * (6 if i == 0 else 4)


@pytest.mark.parametrize("mean_substitution", [False, True])
def test_cbp_replaces_lowest_utility_units_as_in_the_authors_code(mean_substitution):
    net = _net(1)
    opt = torch.optim.Adam(net.parameters())
    cbp = ContinualBackprop([net[0], net[2], net[4]], replacement_rate=0.34, maturity_threshold=1, decay_rate=0.9,
                            accumulate=True, optimizer=opt, mean_substitution=mean_substitution, seed=0)
    g = torch.Generator().manual_seed(2)
    for step in range(2):
        x = torch.randn(8, 3, generator=g, dtype=torch.float64)
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()
        net(x)
        if step == 0:
            assert cbp.step() == [0, 0]
            continue
        before = copy.deepcopy(net)
        util = [u.clone() * 0.9 for u in cbp.util]  # utilities before this step's update
        means = [m.clone() * 0.9 for m in cbp.mean_act]
        h1 = torch.relu(before[0](x))
        h2 = torch.relu(before[2](h1))
        for i, (h, out) in enumerate(((h1, before[2]), (h2, before[4]))):
            util[i] += 0.1 * out.weight.detach().abs().mean(0) * h.detach().abs().mean(0)
            means[i] += 0.1 * h.detach().mean(0)
        counts = cbp.step()
    assert counts == [int(0.34 * 6), int(0.34 * 4)] == [2, 1]
    replaced = []
    for i, (lin_in, old_in) in enumerate(((net[0], before[0]), (net[2], before[2]))):
        expected = set(torch.topk(-(util[i] / (1 - 0.9 ** 2)), counts[i]).indices.tolist())
        cols = [c for c in range(lin_in.in_features) if not replaced or c not in replaced[-1]]  # see below
        changed = {j for j in range(lin_in.out_features)
                   if not torch.equal(lin_in.weight[j, cols], old_in.weight[j, cols])}
        assert changed == expected
        replaced.append(sorted(expected))
    for i, (lin_in, lin_out, old_out) in enumerate(((net[0], net[2], before[2]), (net[2], net[4], before[4]))):
        corr = 1 - 0.9 ** 2
        idx = replaced[i]
        bound = (2 ** 0.5) * (3 / lin_in.in_features) ** 0.5
        assert float(lin_in.weight[idx].abs().max()) <= bound
        assert float(lin_in.bias[idx].abs().max()) == 0.0
        # outgoing weights are zeroed, except rows re-initialised afterwards as the next layer's incoming weights
        # (the authors' gen_new_features loops over layers in the same order)
        kept_rows = [r for r in range(lin_out.out_features) if i + 1 >= len(replaced) or r not in replaced[i + 1]]
        assert float(lin_out.weight[kept_rows][:, idx].abs().max()) == 0.0
        shift = old_out.weight[:, idx] @ (means[i][idx] / corr) if mean_substitution else 0.0
        if i + 1 < len(replaced):
            keep = [r for r in range(lin_out.out_features) if r not in replaced[i + 1]]
            torch.testing.assert_close(lin_out.bias.detach()[keep], (old_out.bias.detach() + shift)[keep])
        else:
            torch.testing.assert_close(lin_out.bias.detach(), old_out.bias.detach() + shift)
        assert cbp.ages[i][idx].tolist() == [0] * len(idx) and float(cbp.util[i][idx].abs().sum()) == 0.0
        assert float(opt.state[lin_in.weight]["exp_avg_sq"][idx].abs().sum()) == 0.0
        assert float(opt.state[lin_out.weight]["exp_avg"][:, idx].abs().sum()) == 0.0
        del lin_out


def test_cbp_probability_branch_state_roundtrip_and_bad_inputs():
    net = _net(2)
    cbp = ContinualBackprop([net[0], net[2], net[4]], replacement_rate=0.1, maturity_threshold=0, seed=4)
    x = torch.ones(2, 3, dtype=torch.float64)
    net(x)
    state = cbp.state_dict()
    first = cbp.step()  # 0.6 and 0.4 expected replacements: one unit each with that probability
    assert all(c in (0, 1) for c in first)
    cbp.load_state_dict(state)
    net2 = _net(2)
    cbp2 = ContinualBackprop([net2[0], net2[2], net2[4]], replacement_rate=0.1, maturity_threshold=0, seed=99)
    cbp2.load_state_dict(state)
    net2(x)
    assert cbp2.step() == first
    with pytest.raises(DataError, match="forward pass"):
        cbp2.step()
    with pytest.raises(ConfigError, match=r"nn\.Linear"):
        ContinualBackprop([net[0]])
    with pytest.raises(ConfigError, match="chain"):
        ContinualBackprop([net[0], net[4]])
    with pytest.raises(ConfigError, match="replacement_rate"):
        ContinualBackprop([net[0], net[2]], replacement_rate=2.0)
    with pytest.raises(ConfigError, match="seed"):
        ContinualBackprop([net[0], net[2]], seed=0.5)
    with pytest.raises(DataError, match="misses parameter"):
        l2_init_penalty(net, {})
    with pytest.raises(ConfigError, match="mapping"):
        wasserstein_init_penalty(net, [1, 2])
    with pytest.raises(ConfigError, match="k must be"):
        SpectralRegularizer(net, k=0)


def test_input_sensitivity_by_hand():
    a, b = torch.tensor([1.0, 3.0], dtype=torch.float64), torch.tensor([0.5, -1.0], dtype=torch.float64)
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5]], dtype=torch.float64)

    def loss(m, batch):
        z = m(batch[0])
        return (a * z ** 2 + b * z).sum(1).mean()

    s = input_sensitivity(nn.Identity(), loss, (x, torch.zeros(2)))
    grad = (2 * a * x + b) / 2  # d/dx of the mean over 2 samples
    np.testing.assert_allclose(s.first, grad.mean(0).numpy())
    np.testing.assert_allclose(s.first_abs, grad.abs().mean(0).numpy())
    np.testing.assert_allclose(s.second, (2 * a / 2).numpy())
    with pytest.raises(DataError, match="floating-point"):
        input_sensitivity(nn.Identity(), loss, (torch.ones(2, 2, dtype=torch.long), 0))
    with pytest.raises(ConfigError, match="input_index"):
        input_sensitivity(nn.Identity(), loss, (x, x), input_index=5)


def _manual_jac(model, x):
    rows = []
    for i in range(x.shape[0]):
        out = model(x[i:i + 1]).reshape(-1)
        per_c = []
        for c in range(out.numel()):
            gs = torch.autograd.grad(out[c], list(model.parameters()), retain_graph=True)
            per_c.append([g.reshape(-1) for g in gs])
        rows.append(per_c)
    return rows  # [i][c][param]


def test_ntk_and_alignment_against_autograd_loops():
    model = tiny_mlp(width=4).eval()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    J = _manual_jac(model, x)
    n, C, P = 5, 2, len(list(model.parameters()))
    K = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            K[i, j] = sum(float(J[i][c][p] @ J[j][c][p]) for c in range(C) for p in range(P))
    torch.testing.assert_close(empirical_ntk(model, x), K)
    y = torch.tensor([0, 1, 1, 0, 1])
    Y = torch.nn.functional.one_hot(y).double()
    H = torch.eye(n, dtype=torch.float64) - 1 / n
    KY = H @ Y @ Y.T @ H
    align = tangent_alignment(model, x, y)
    for layer, plist in (("0", [0, 1]), ("2", [2, 3])):
        Kl = torch.zeros(n, n, dtype=torch.float64)
        for i in range(n):
            for j in range(n):
                Kl[i, j] = sum(float(J[i][c][p] @ J[j][c][p]) for c in range(C) for p in plist)
        Kl = H @ Kl @ H
        assert align[layer] == pytest.approx(float((Kl * KY).sum() / (Kl.norm() * KY.norm())), rel=1e-10)
    assert -1 <= min(align.values()) <= max(align.values()) <= 1


def test_kernel_distance_lazy_vs_rich():
    K = empirical_ntk(tiny_mlp(), torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    assert kernel_distance(K, 5.0 * K) == pytest.approx(0.0, abs=1e-12)
    other = empirical_ntk(tiny_mlp(seed=7), torch.randn(6, 3, generator=torch.Generator().manual_seed(1),
                                                        dtype=torch.float64))
    assert 0 < kernel_distance(K, other) <= 1
    with pytest.raises(DataError, match="shape"):
        kernel_distance(K, K[:2, :2])
    with pytest.raises(DataError, match="zero"):
        kernel_distance(K, torch.zeros_like(K))
    with pytest.raises(DataError, match="square"):
        kernel_distance(torch.ones(2, 3), torch.ones(2, 3))
    with pytest.raises(DataError, match="non-empty"):
        empirical_ntk(tiny_mlp(), torch.ones(0, 3, dtype=torch.float64))
    with pytest.raises(DataError, match="one row per input"):
        tangent_alignment(tiny_mlp(), torch.ones(3, 3, dtype=torch.float64), torch.tensor([0, 1]))


def test_kernel_distance_stays_in_its_range_under_round_off():
    """1 - cos lies in [0, 2], also under round-off (plain float64 gives -4e-16 for identical kernels on some seeds)."""
    for seed in range(20):
        jac = torch.randn(6, 20, generator=torch.Generator().manual_seed(seed))
        kernel = jac @ jac.T
        assert 0.0 <= kernel_distance(kernel, kernel) < 1e-12
        assert 2.0 - 1e-12 < kernel_distance(kernel, -kernel) <= 2.0
