"""The learnable quantizer (QuPeD §2): exact numbers on tiny tensors, packing, centralized training."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedsqueeze.errors import ConfigError, PayloadError
from fedsqueeze.models.quantizer import (QuantConfig, Quantizer, assign, center_step, fit, init_centers,
                                         pack_model, packed_size, prox, quantize, quantized_names,
                                         unpack_model)

T = torch.tensor


def test_prox_l1_soft_thresholds_towards_the_center():
    x, q = T([1.0, 0.25, -0.5, 2.0]), T([0.5, 0.125, 0.0, 2.5])
    # x - q = [0.5, 0.125, -0.5, -0.5]; shrink by 0.125: [0.375, 0, -0.375, -0.375]
    assert torch.equal(prox(x, q, 0.125, "l1"), T([0.875, 0.125, -0.375, 2.125]))


def test_prox_l2_shrinks_towards_the_center():
    x, q = T([1.0, 0.25, -0.5, 2.0]), T([0.5, 0.125, 0.0, 2.5])
    # (x + 2t q) / (1 + 2t) with t = 0.5: the midpoint
    assert torch.equal(prox(x, q, 0.5, "l2"), T([0.75, 0.1875, -0.25, 2.25]))


def test_assign_nearest_center_ties_go_down():
    c = T([-1.0, 0.0, 2.0])
    assert assign(T([-0.5, -0.4, 1.0, 1.1, 5.0, -9.0]), c).tolist() == [0, 1, 1, 2, 2, 0]
    assert torch.equal(quantize(T([0.3, 1.5]), c), T([0.0, 2.0]))


def test_init_centers():
    x = T([-1.0, -3.0, 2.0, 4.0, 0.0])
    assert torch.equal(init_centers(x, 1), T([-2.0, 2.0]))  # mean of negatives, of non-negatives
    assert torch.equal(init_centers(T([-3.0, 0.0, 3.0]), 2), T([-3.0, -1.0, 1.0, 3.0]))


def test_center_step_clips_gradient_sums_and_resorts():
    cfg = QuantConfig(bits=1, eta_c=0.5, clip=1.5, center_prox=False)
    # x -> centers [1, 0, 1]; gradient sums: c0 = 2 (clipped to 1.5), c1 = 1 + 0.5
    out = center_step(T([-1.0, 1.0]), T([0.75, -1.0, 0.5]), T([1.0, 2.0, 0.5]), cfg, lam=1.0)
    assert torch.equal(out, T([-1.75, 0.25]))
    # c0 moves past c1: the result is re-sorted
    out = center_step(T([0.0, 0.25]), T([0.0, 0.25]), T([-1.0, 0.0]), cfg, lam=0.0)
    assert torch.equal(out, T([0.25, 0.5]))


def test_center_step_with_the_regulariser():
    x, g = T([0.75, -1.0, 0.5]), T([1.0, 2.0, 0.5])
    l2 = QuantConfig(bits=1, reg="l2", eta_c=0.5, clip=10.0)
    # c - η_c g = [-2, 0.25]; members n = [1, 2], Σx = [-1, 1.25]; (c' + 2λη_c Σx) / (1 + 2λη_c n), λ = 1
    assert torch.equal(center_step(T([-1.0, 1.0]), x, g, l2, lam=1.0), T([-1.5, 0.5]))
    l1 = QuantConfig(bits=1, reg="l1", eta_c=0.5, clip=10.0)
    # subgradient: + η_c λ Σ sign(x - c_j) = 0.5 * [0, sign(-0.25) + sign(-0.5)] = [0, -1]
    assert torch.equal(center_step(T([-1.0, 1.0]), x, g, l1, lam=1.0), T([-2.0, -0.75]))
    # the clip covers f's sum and the regulariser's together: [2, 1.5 + 2] clipped to ±1.5
    l1_clip = QuantConfig(bits=1, reg="l1", eta_c=0.5, clip=1.5)
    assert torch.equal(center_step(T([-1.0, 1.0]), x, g, l1_clip, lam=1.0), T([-1.75, 0.25]))


def _linear(w, bias=False):
    model = nn.Linear(2, 1, bias=bias)
    with torch.no_grad():
        model.weight.copy_(T([w]))
        if bias:
            model.bias.zero_()
    return model


def test_one_step_gradient_prox_then_centers():
    """loss = sum of logits with input [1, 2]: the gradient is [1, 2] at any weights."""
    model = _linear([0.75, -0.5])
    cfg = QuantConfig(bits=1, reg="l1", eta_c=0.5, clip=1.5, quantize_first_last=True)
    q = Quantizer(cfg, {"weight": T([-1.0, 1.0])})
    opt = torch.optim.SGD(model.parameters(), lr=0.25)
    loss, logits = q.step(model, opt, T([[1.0, 2.0]]), lambda z: z.sum(), lam=1.0)
    # f at Q(x) = [1, -1]: -1. x - ηg = [0.5, -1.0]; Q = [1, -1]; soft-threshold by λη = 0.25 -> [0.75, -1.0]
    assert loss == -1.0 and torch.equal(model.weight.detach(), T([[0.75, -1.0]]))
    # centers: f's sums [2, 1] minus λ·Σ sign(x - c) = [0, -1] gives [2, 2], clipped to [1.5, 1.5];
    # c - 0.5 * [1.5, 1.5] = [-1.75, 0.25]
    assert torch.equal(q.centers["weight"], T([-1.75, 0.25]))
    assert torch.equal(logits, T([[-1.0]]))  # Q_{c_t}(x_{t+1}) = [1, -1]
    # the released code's variant evaluates the x-gradient at the latent weights
    q_full = Quantizer(QuantConfig(bits=1, eta_c=0.5, clip=1.5, quantize_first_last=True, x_grad="full"),
                       {"weight": T([-1.0, 1.0])})
    model = _linear([0.75, -0.5])
    loss, _ = q_full.step(model, torch.optim.SGD(model.parameters(), lr=0.25), T([[1.0, 2.0]]),
                          lambda z: z.sum(), lam=1.0)
    assert loss == -0.25


def test_frozen_step_moves_only_centers_and_full_precision_tensors():
    model = _linear([0.75, -0.5], bias=True)
    q = Quantizer(QuantConfig(bits=1, eta_c=0.5, quantize_first_last=True), {"weight": T([-1.0, 1.0])})
    q.freeze_(model)
    assert torch.equal(model.weight.detach(), T([[1.0, -1.0]]))
    q.step(model, torch.optim.SGD(model.parameters(), lr=0.25), T([[1.0, 2.0]]), lambda z: z.sum(), lam=5.0)
    # center sums [2, 1] -> c = [-2, 0.5]; the weights follow their centers; the bias takes an SGD step
    assert torch.equal(q.centers["weight"], T([-2.0, 0.5]))
    assert torch.equal(model.weight.detach(), T([[0.5, -2.0]]))
    assert torch.equal(model.bias.detach(), T([-0.25]))


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_hard_quantization_has_at_most_2_pow_b_values_per_layer(bits):
    torch.manual_seed(bits)
    from fedsqueeze.models.zoo import SmallCNN
    model = SmallCNN((1, 8, 8), 10, width=4, hidden=16)
    weights = {k: v.detach() for k, v in model.state_dict().items()}
    q = Quantizer.init(QuantConfig(bits=bits, quantize_first_last=True), weights)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    for _ in range(3):
        q.step(model, opt, x, lambda z: nn.functional.cross_entropy(z, y), lam=0.01)
    hard = q.hard({k: v.detach() for k, v in model.state_dict().items()})
    assert set(q.centers) == {n for n, t in hard.items() if t.dim() >= 2}
    for n in q.centers:
        assert torch.unique(hard[n]).numel() <= 2 ** bits
        assert torch.isin(hard[n], q.centers[n]).all()


def test_quantized_names_skip_first_and_last_by_default():
    w = {"a.weight": torch.zeros(3, 4), "a.bias": torch.zeros(3), "b.weight": torch.zeros(3, 3),
         "c.weight": torch.zeros(2, 3)}
    assert quantized_names(w) == ["b.weight"]
    assert quantized_names(w, first_last=True) == ["a.weight", "b.weight", "c.weight"]


def test_packed_size_formula_and_round_trip():
    w = {"a.weight": torch.randn(3, 5), "a.bias": torch.randn(3), "b.weight": torch.randn(2, 3)}
    centers = {"a.weight": T([-1.0, -0.25, 0.25, 1.0])}
    data = pack_model(w, centers, bits=2)
    # 13 (magic, version, count, CRC) + a.weight 2+8+1+1+8 + 1+16+ceil(15*2/8)=4
    # + a.bias 2+6+1+1+4 + 12 + b.weight 2+8+1+1+8 + 24
    assert len(data) == packed_size(w, centers, 2) == 13 + 41 + 26 + 44 == 124
    back = unpack_model(data)
    assert torch.equal(back["a.weight"], quantize(w["a.weight"], centers["a.weight"]))
    assert torch.equal(back["a.bias"], w["a.bias"]) and torch.equal(back["b.weight"], w["b.weight"])
    # b bits per quantized weight: 1000 weights at 1 bit take 125 bytes plus header and centers
    big = {"w": torch.randn(1000, 1)}
    assert len(pack_model(big, {"w": T([-1.0, 1.0])}, 1)) == 13 + (2 + 1 + 1 + 1 + 8) + 1 + 8 + 125
    with pytest.raises(PayloadError):
        unpack_model(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="algorithm.bits"):
        QuantConfig(bits=0)
    with pytest.raises(ConfigError, match="algorithm.reg"):
        QuantConfig(reg="l3")


def test_centralized_training_on_digits_learns(digits):
    """Algorithm 1 alone: a 2-bit MLP on digits, 6 epochs, reaches > 85% test accuracy after freezing."""
    torch.manual_seed(0)
    from fedsqueeze.models.zoo import MLP
    model = MLP((1, 8, 8), 10, hidden=32)
    q = Quantizer.init(QuantConfig(bits=2), {k: v.detach() for k, v in model.state_dict().items()})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)

    def batches(epoch):
        perm = torch.randperm(len(digits.y_train), generator=g)
        for i in range(0, len(perm), 32):
            yield digits.x_train[perm[i:i + 32]], digits.y_train[perm[i:i + 32]]
    losses = fit(model, q, opt, batches, epochs=6, freeze_epoch=5)
    assert q.frozen and losses[-1] < losses[0]
    hidden = model.encoder[3].weight.detach()
    assert torch.unique(hidden).numel() <= 4
    with torch.no_grad():
        acc = (model(digits.x_test).argmax(1) == digits.y_test).float().mean().item()
    assert acc > 0.85, acc
    assert not math.isnan(losses[-1])
