"""FLOPs of the ops modern exit heads use: attention, matmul, softmax, GELU/SiLU, norms.

Each count is checked against `torch.utils.flop_counter` (which counts a multiply-add
as two FLOPs, so halved here) or a hand count, and what stays uncounted is reported.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tradeoff.cache.format import uncounted_ops_note
from tradeoff.flops import exit_costs
from tradeoff.models.base import MultiExitNet, Stage

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from fvcore.nn import FlopCountAnalysis


def _torch_macs(fn, *args) -> int:
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops() // 2


class AttentionHead(nn.Module):
    """The issue's exit head: 1x1 conv to q/k/v over 16x16 = 256 tokens, SDPA, GELU, linear."""

    def __init__(self, channels=64, num_classes=10):
        super().__init__()
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.fc = nn.Linear(256 * channels, num_classes)

    def forward(self, x):
        q, k, v = self.qkv(x).flatten(2).transpose(1, 2).chunk(3, dim=-1)
        a = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])
        return self.fc(F.gelu(a).flatten(1))


class _TwoExit(MultiExitNet):
    def __init__(self, head):
        super().__init__()
        self.stem, self.head, self.pool, self.fc = nn.Identity(), head, nn.AdaptiveAvgPool2d(1), nn.Linear(64, 10)
        self.last = nn.Sequential(self.pool, nn.Flatten(), self.fc)

    def stages(self):
        return [Stage(self.stem, self.head), Stage(nn.Identity(), self.last)]


def test_attention_head_is_charged_its_attention():
    """Before: fvcore's defaults charged 3.31 MFLOPs (the attention's 8.39M multiply-adds as 0)."""
    head = AttentionHead().eval()
    x = torch.zeros(1, 64, 16, 16)
    old = FlopCountAnalysis(head, (x,)).unsupported_ops_warnings(False).total()
    assert old == 3_309_568  # conv 3*64*64*256 + fc 16384*10: what the issue saw
    L, E = 256, 64
    hand = 3 * 64 * 64 * 256 + L * L * (E + E) + L * L + L * E + 16384 * 10  # conv, QK/AV, softmax, GELU, fc
    costs = exit_costs(_TwoExit(head), (64, 16, 16))
    assert costs.head_flops[0] == hand
    assert costs.head_flops[0] / 1e6 == pytest.approx(11.78, abs=0.005)
    assert costs.unsupported_ops == {}


def test_sdpa_matches_torch_flop_counter_plus_softmax():
    q, k, v = torch.randn(2, 4, 32, 16), torch.randn(2, 4, 48, 16), torch.randn(2, 4, 48, 24)

    class Attn(nn.Module):
        def forward(self, q):
            return F.scaled_dot_product_attention(q, k, v)

    counted = FlopCountAnalysis(Attn(), (q,)).set_op_handle(**_handles()).total()
    assert counted == _torch_macs(F.scaled_dot_product_attention, q, k, v) + 2 * 4 * 32 * 48


def _handles():
    from tradeoff.flops import EXTRA_OP_HANDLES

    return EXTRA_OP_HANDLES


@pytest.mark.parametrize("a_shape,b_shape", [((5, 7), (7, 3)), ((2, 5, 7), (7, 3)), ((2, 5, 7), (2, 7, 3)),
                                              ((4, 1, 5, 7), (3, 7, 2)), ((7,), (7, 3)), ((5, 7), (7,))])
def test_matmul_any_rank_matches_torch_flop_counter(a_shape, b_shape):
    a, b = torch.randn(a_shape), torch.randn(b_shape)

    class MatMul(nn.Module):
        def forward(self, a):
            return a @ b

    counted = FlopCountAnalysis(MatMul(), (a,)).set_op_handle(**_handles()).unsupported_ops_warnings(False).total()
    assert counted == (a @ b).numel() * a_shape[-1]  # one dot product of length K per output element
    if a.ndim > 1 and b.ndim > 1:  # torch's counter leaves matrix-vector products out
        assert counted == _torch_macs(torch.matmul, a, b)


def test_bmm_and_einsum_match_torch_flop_counter():
    a, b = torch.randn(3, 5, 7), torch.randn(3, 7, 4)

    class Ops(nn.Module):
        def forward(self, a):
            return torch.bmm(a, b), torch.einsum("bij,bjk->bik", a, b)

    counted = FlopCountAnalysis(Ops(), (a,)).set_op_handle(**_handles()).total()
    assert counted == 2 * _torch_macs(torch.bmm, a, b)


@pytest.mark.parametrize("fn,per_element", [
    (lambda x: F.softmax(x, dim=-1), 1), (F.gelu, 1), (F.silu, 1), (torch.tanh, 1),
    (lambda x: F.layer_norm(x, (8,)), 4), (lambda x: F.group_norm(x, 2), 4),
])
def test_elementwise_and_norm_ops_are_counted(fn, per_element):
    class Op(nn.Module):
        def forward(self, x):
            return fn(x)

    x = torch.randn(1, 4, 6, 8)
    analysis = FlopCountAnalysis(Op(), (x,)).set_op_handle(**_handles()).unsupported_ops_warnings(False)
    assert analysis.total() == per_element * x.numel()
    assert not analysis.unsupported_ops()


def test_uncounted_op_is_named_with_its_count():
    class Odd(nn.Module):
        def forward(self, x):
            return torch.cumsum(torch.cumsum(x, 1), 1).flatten(1)

    costs = exit_costs(_TwoExit(nn.Sequential(Odd(), nn.Linear(64 * 16 * 16, 10))), (64, 16, 16))
    assert costs.unsupported_ops == {"aten::cumsum": 2}
    note = uncounted_ops_note({"unsupported_ops": costs.unsupported_ops})
    assert note == "FLOPs exclude 1 uncounted op(s): aten::cumsum x2"
    assert uncounted_ops_note({"unsupported_ops": {}}) is None


def test_uncounted_ops_reach_summary_and_plot_titles(tmp_path):
    """Before: the uncounted ops sat only in the cache meta; summary.json dropped them."""
    import dataclasses
    import json

    from tradeoff.cache.format import make_meta, write_cache
    from tradeoff.cache.synthetic import synthetic_cache
    from tradeoff.commands import main
    from tradeoff.report.plot_data import exits_plot_data, pareto_plot_data

    cache = synthetic_cache(600, 10, (0.6, 0.75, 0.85), seed=3)
    meta = dict(cache.meta, unsupported_ops={"aten::scaled_dot_product_attention": 3})
    path = write_cache(tmp_path / "c.npz", dataclasses.replace(cache, meta=make_meta(**meta)))
    out = tmp_path / "run"
    assert main(["search", "--cache", str(path), "--target-acc", "0.7", "--out", str(out), "--pop", "12",
                 "--gens", "4"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cache"]["meta"]["unsupported_ops"] == {"aten::scaled_dot_product_attention": 3}
    for gather in (pareto_plot_data, exits_plot_data):
        assert gather(out).title.endswith("FLOPs exclude 1 uncounted op(s): aten::scaled_dot_product_attention x3")
