"""nlpkit.engine.fast_dropout: the same dropout as torch's (rate, scaling, gradient), reproducible from torch's seed,
the same mask again under gradient checkpointing, and attention equal to SDPA's when nothing is dropped."""
import math

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

from nlpkit.engine import fast_dropout, heap


def test_keep_rate_and_scale_give_an_unbiased_dropout():
    torch.manual_seed(0)
    for p in (0.1, 0.5, 0.9):
        mask = fast_dropout.keep_mask((400, 1000), p)
        n = mask.numel()
        keep = 1 - round(p * 65536) / 65536
        # within 5 standard deviations of the binomial: fails for a biased or a wrong-rate mask
        assert abs(mask.float().mean().item() - keep) < 5 * math.sqrt(keep * (1 - keep) / n)
        assert fast_dropout.keep_scale(p) * keep == pytest.approx(1.0)
    x = torch.ones(200, 1000)
    assert fast_dropout.dropout(x, 0.1).mean().item() == pytest.approx(1.0, abs=0.01)


def test_masks_follow_torchs_seed_and_differ_between_calls():
    torch.manual_seed(3)
    a, b = fast_dropout.keep_mask((64, 64), 0.3), fast_dropout.keep_mask((64, 64), 0.3)
    torch.manual_seed(3)
    assert torch.equal(fast_dropout.keep_mask((64, 64), 0.3), a) and not torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_and_gradient_use_the_same_mask(dtype):
    torch.manual_seed(1)
    x = torch.randn(8, 16, 32).to(dtype).requires_grad_()
    torch.manual_seed(7)
    y = fast_dropout.dropout(x, 0.25)
    torch.manual_seed(7)
    mask = fast_dropout.keep_mask(x.shape, 0.25)
    scale = fast_dropout.keep_scale(0.25)
    assert y.dtype == dtype and torch.equal(y, x.detach().mul(mask).mul_(scale))
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.equal(x.grad, g.mul(mask).mul_(scale))


def test_module_is_identity_in_eval_and_off_cpu_paths_fall_back():
    layer = fast_dropout.FastDropout(0.5)
    x = torch.randn(4, 4)
    assert torch.equal(layer.eval()(x), x)
    assert torch.equal(fast_dropout.dropout(x, 0.0), x) and fast_dropout.dropout(x, 1.0).abs().sum() == 0


def tiny_bert(dropout=0.1):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    cfg._attn_implementation = "sdpa"
    return BertModel(cfg, add_pooling_layer=False)


def batch():
    ids = torch.randint(5, 100, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids, mask


def test_install_swaps_every_dropout_and_the_attention_and_uninstall_restores():
    model = tiny_bert()
    swapped = fast_dropout.install(model)
    assert swapped == sum(1 for m in model.modules() if isinstance(m, fast_dropout.FastDropout)) == 7  # 3 per layer + embeddings
    assert model.config._attn_implementation == fast_dropout.ATTENTION
    fast_dropout.uninstall(model)
    assert not any(isinstance(m, fast_dropout.FastDropout) for m in model.modules())
    assert model.config._attn_implementation == "sdpa"


def test_attention_equals_sdpa_without_dropout_and_in_eval():
    ids, mask = batch()
    ref, ours = tiny_bert(0.0), tiny_bert(0.0)
    fast_dropout.install(ours)
    for mode in (True, False):
        ref.train(mode), ours.train(mode)
        a = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        b = ours(input_ids=ids, attention_mask=mask).last_hidden_state
        assert torch.allclose(a, b, atol=1e-6)


def test_attention_math_path_equals_eager_attention_with_the_same_masks(monkeypatch):
    """With dropout on, nlpkit_sdpa computes attention itself; eager attention given the very same masks
    (torch dropout replaced by the fast one) must produce the same hidden states and gradients."""
    ids, mask = batch()
    ours = tiny_bert(0.2)
    fast_dropout.install(ours)
    eager = tiny_bert(0.2)
    eager.set_attn_implementation("eager")
    for parent in eager.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, fast_dropout.FastDropout(child.p))
    real = nn.functional.dropout
    monkeypatch.setattr(nn.functional, "dropout",
                        lambda x, p=0.5, training=True, inplace=False: fast_dropout.dropout(x, p, training))
    outs = []
    for model in (ours, eager):
        model.train()
        torch.manual_seed(11)
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        out.pow(2).sum().backward()
        outs.append((out.detach(), model.encoder.layer[0].attention.self.query.weight.grad.clone()))
    monkeypatch.setattr(nn.functional, "dropout", real)
    real_rows = mask.bool()
    assert torch.allclose(outs[0][0][real_rows], outs[1][0][real_rows], atol=1e-5)
    assert torch.allclose(outs[0][1], outs[1][1], atol=1e-4)


def test_gradient_checkpointing_recomputes_the_same_masks():
    ids, mask = batch()
    grads = []
    for checkpointing in (False, True):
        model = tiny_bert(0.3)
        fast_dropout.install(model)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        torch.manual_seed(5)
        model(input_ids=ids, attention_mask=mask).last_hidden_state.pow(2).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_heap_reuse_turns_on_and_back_off():
    with heap.reuse_freed_memory(True) as on:
        torch.zeros(4096, 4096)
    assert on == (heap._libc() is not None)
    with heap.reuse_freed_memory(False) as on:
        assert on is False
