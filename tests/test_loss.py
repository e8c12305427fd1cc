"""The fused output layer and loss (`linear_cross_entropy`, lesson 05) against plain autograd, in the cases the lesson's
inline checks leave out: many chunks with a ragged last one, every target ignored, bf16 autocast (how GPUs train),
and a second backward through the same graph."""
import pytest
import torch
import torch.nn.functional as F

from nanollama.llama import LinearCrossEntropy, chunked_cross_entropy, linear_cross_entropy


def plain_loss(h, w, targets, softcap, reduction="mean"):
    z = (h @ w.T).float()
    if softcap: z = softcap * torch.tanh(z / softcap)
    return F.cross_entropy(z, targets, ignore_index=-1, reduction=reduction)


def inputs(n=301, width=48, vocab=3000, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, width, generator=g).requires_grad_()
    w = (torch.randn(vocab, width, generator=g) * 0.2).requires_grad_()
    targets = torch.randint(0, vocab, (n,), generator=g)
    targets[::6] = -1
    return h, w, targets


@pytest.mark.parametrize("softcap", [0.0, 15.0])
def test_many_ragged_chunks(softcap):
    h, w, targets = inputs()
    total, grad_h, grad_w = chunked_cross_entropy(h.detach(), w.detach(), targets, softcap, chunk_logits=40 * 3000)  # 8 chunks, last of 21 rows
    ref = plain_loss(h, w, targets, softcap, reduction="sum")
    torch.testing.assert_close(total, ref.detach())
    for a, b in zip((grad_h, grad_w), torch.autograd.grad(ref, (h, w))): torch.testing.assert_close(a, b)


def test_all_targets_ignored():
    h, w, targets = inputs()
    loss = linear_cross_entropy(h, w, torch.full_like(targets, -1), 15.0)
    gh, gw = torch.autograd.grad(loss, (h, w))
    assert loss.item() == 0 and not gh.any() and not gw.any()


@pytest.mark.parametrize("softcap", [0.0, 15.0])
def test_bf16_autocast(softcap):
    "Under autocast the head's matmuls run in bf16, as autocast would run them; loss and gradients stay float32."
    h, w, targets = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused, ref = linear_cross_entropy(h, w, targets, softcap), plain_loss(h, w, targets, softcap)
        grads = torch.autograd.grad(fused, (h, w)), torch.autograd.grad(ref, (h, w))
    assert fused.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads[0])
    torch.testing.assert_close(fused, ref, atol=1e-3, rtol=1e-3)
    for a, b in zip(*grads): torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-2)
    exact = linear_cross_entropy(h, w, targets, softcap)  # and bf16 really was used: the float32 result differs
    assert (exact - fused).abs() > 1e-6


def test_second_backward_fails_loudly():
    "The backward pass scales the stored gradients in place, so a second one must raise, not return wrong gradients."
    h, w, targets = inputs()
    loss = LinearCrossEntropy.apply(h, w, targets, 0.0)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"): loss.backward()
