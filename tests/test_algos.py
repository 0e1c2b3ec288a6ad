import math

import pytest
import torch

from learners.algos import (
    aggregate,
    broadcast_to_segments,
    group_advantages,
    kl_penalty,
    policy_loss,
    token_weights,
    truncated_is_weight,
)


def test_group_advantages_subtract_the_group_mean():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    group = torch.tensor([0, 0, 0, 0, 1, 1])
    assert torch.allclose(group_advantages(rewards, group), torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0]))


def test_group_advantages_std_division_and_uniform_groups():
    rewards = torch.tensor([1.0, 0.0, 3.0, 3.0, 2.0])
    group = torch.tensor([0, 0, 1, 1, 2])
    adv = group_advantages(rewards, group, scale_by_std=True, eps=0.0 + 1e-12)
    std0 = math.sqrt(0.5)  # unbiased std of {1, 0}
    assert torch.allclose(adv, torch.tensor([0.5 / std0, -0.5 / std0, 0.0, 0.0, 0.0]))


def test_group_ids_need_not_be_contiguous_or_sorted():
    adv = group_advantages(torch.tensor([2.0, 1.0, 4.0, 0.0]), torch.tensor([3, 0, 3, 0]))
    assert torch.allclose(adv, torch.tensor([-1.0, 0.5, 1.0, -0.5]))


def test_broadcast_gives_each_segment_its_trajectory_advantage():
    out = broadcast_to_segments(torch.tensor([0.5, -0.25, 1.0]), torch.tensor([3, 1, 2]))
    assert out.tolist() == [0.5, 0.5, 0.5, -0.25, 1.0, 1.0]


def test_policy_loss_clips_asymmetrically():
    # ratios 1.5, 0.5, 1.1 with positive, negative, positive advantage.
    old = torch.zeros(1, 3)
    logprobs = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    adv = torch.tensor([2.0])
    loss, clipped = policy_loss(logprobs, old, adv, clip_low=0.2, clip_high=0.28)
    # A > 0: min(r A, clip(r) A) -> 1.28*2 for r=1.5 (clipped), 0.5*2 for r=0.5 (clip would raise it), 1.1*2.
    assert torch.allclose(loss, -torch.tensor([[2.56, 1.0, 2.2]]))
    assert clipped.tolist() == [[1.0, 0.0, 0.0]]
    loss_neg, clipped_neg = policy_loss(logprobs, old, -adv, clip_low=0.2, clip_high=0.28)
    # A < 0: the pessimistic side is max(r, clip(r)) * |A| -> 1.5, 0.8 (clipped), 1.1.
    assert torch.allclose(loss_neg, torch.tensor([[3.0, 1.6, 2.2]]))
    assert clipped_neg.tolist() == [[0.0, 1.0, 0.0]]
    # Per-token advantages: the same surrogate position by position.
    per_token, _ = policy_loss(logprobs, old, torch.tensor([[2.0, -2.0, 2.0]]), clip_low=0.2, clip_high=0.28)
    assert torch.allclose(per_token, torch.tensor([[-2.56, 1.6, -2.2]]))


def test_policy_loss_gradient_is_zero_where_clipped():
    logprobs = torch.log(torch.tensor([[1.5, 1.0]])).requires_grad_()
    loss, _ = policy_loss(logprobs, torch.zeros(1, 2), torch.tensor([1.0]))
    loss.sum().backward()
    assert logprobs.grad.tolist() == [[0.0, -1.0]]  # d(-r)/dlogp = -r at r = 1


def test_kl_penalty_is_zero_at_the_reference_and_positive_elsewhere():
    lp = torch.tensor([[-1.0, -2.0]])
    assert torch.allclose(kl_penalty(lp, lp), torch.zeros(1, 2))
    ref = torch.tensor([[-1.5, -1.0]])
    expected = torch.exp(ref - lp) - (ref - lp) - 1
    assert torch.allclose(kl_penalty(lp, ref), expected) and (expected > 0).all()


def test_truncated_is_weight_caps_and_has_no_gradient():
    old = torch.tensor([[0.0, 0.0, -1.0]], requires_grad=True)
    rollout = torch.tensor([[0.0, -2.0, 0.0]])
    w = truncated_is_weight(old, rollout, cap=2.0)
    assert torch.allclose(w, torch.tensor([[1.0, 2.0, math.exp(-1.0)]]))
    assert not w.requires_grad


def test_token_weights_reweight_the_budget_choice_token_only():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    choice = torch.tensor([1.0, 0.0])  # the second row opens with an ordinary token (a Fold segment, fixed budget)
    assert token_weights(mask, choice, 4.0).tolist() == [[4.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]]


def test_aggregations_by_hand_and_padding_is_ignored():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, float("nan"), float("nan")]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate(loss, mask, "token_mean", 4).item() == pytest.approx(10 / 4)
    assert aggregate(loss, mask, "sequence_mean", 2).item() == pytest.approx((2.0 + 4.0) / 2)
    with pytest.raises(ValueError, match="token_sum"):
        aggregate(loss, mask, "token_sum", 1)


@pytest.mark.parametrize("mode", ["token_mean", "sequence_mean"])
def test_loss_and_gradient_do_not_change_when_the_batch_is_split_over_two_ranks(mode):
    """Each rank aggregates its half with the global denominator; the ranks' losses and gradients summed
    (what data-parallel all-reduce does, before its division by world size) equal the one-rank result."""
    torch.manual_seed(0)
    lengths = torch.tensor([7, 2, 5, 1, 3, 6])
    mask = (torch.arange(8)[None] < lengths[:, None]).float()
    logits = torch.randn(6, 8, requires_grad=True)
    old = torch.randn(6, 8).clamp(-3, 0)
    adv = torch.randn(6)
    denominator = mask.sum() if mode == "token_mean" else 6

    def share(rows):
        loss, _ = policy_loss(torch.log_softmax(logits, -1)[rows], old[rows], adv[rows])
        return aggregate(loss, mask[rows], mode, denominator)

    whole = share(slice(0, 6))
    (grad_whole,) = torch.autograd.grad(whole, logits)
    # Unbalanced split by tokens: rank 0 gets 3 samples, rank 1 gets 3 (with micro-batches of 2 and 1).
    rank0 = share(slice(0, 2)) + share(slice(2, 3))
    rank1 = share(slice(3, 6))
    (grad_split,) = torch.autograd.grad(rank0 + rank1, logits)
    assert torch.allclose(whole, rank0 + rank1, atol=1e-6)
    assert torch.allclose(grad_whole, grad_split, atol=1e-6)
