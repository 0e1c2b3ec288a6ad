"""The loss algebra of RL and SFT: pure tensor functions, no Ray, no torch.distributed, no host syncs.

Shapes: N trajectories, S samples (a trajectory's Fold segments are samples of their own), B samples
in a micro-batch, L response positions (right-padded, `mask` is 1 on real response tokens).

Data-parallel invariance: `aggregate` divides by the count over the *whole* batch (all ranks, all
micro-batches), passed in as `denominator`, so summing the per-micro-batch results over ranks gives the
same loss however the batch was split (OpenRLHF's aggregate_loss contract; tests/test_algos.py).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def group_advantages(rewards: Tensor, group: Tensor, scale_by_std: bool = False, eps: float = 1e-6) -> Tensor:
    """GRPO advantage: reward minus its group's mean, optionally divided by the group's std.

    rewards (N,) float; group (N,) long, ids in 0..G-1 (e.g. the prompt index). Returns (N,).
    Accordion uses no std division; a group whose rewards are all equal gets advantage 0.
    """
    num_groups = rewards.numel()  # an upper bound on the ids: no host sync to find the real count
    count = torch.zeros(num_groups, dtype=rewards.dtype).index_add_(0, group, torch.ones_like(rewards))
    mean = torch.zeros(num_groups, dtype=rewards.dtype).index_add_(0, group, rewards) / count
    centred = rewards - mean[group]
    if not scale_by_std:
        return centred
    # Unbiased std as in GRPO; a singleton group has no spread, its advantage is 0 already.
    var = torch.zeros(num_groups, dtype=rewards.dtype).index_add_(0, group, centred**2) / (count - 1).clamp(min=1)
    return centred / (var.sqrt()[group] + eps)


def broadcast_to_segments(advantages: Tensor, segments: Tensor) -> Tensor:
    """Give each Fold segment its trajectory's advantage (Accordion: one advantage per chain).

    advantages (N,); segments (N,) long, how many samples trajectory n produced. Returns (S,) with
    S = segments.sum(), trajectory-major (the order the generator emits segments in).
    """
    return torch.repeat_interleave(advantages, segments)


def masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    """Sum of `values` where `mask` is 1; masked positions may hold NaN/inf (padding) and are ignored."""
    return torch.where(mask.bool(), values, 0.0).sum()


def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, clip_low: float = 0.2, clip_high: float = 0.28
) -> tuple[Tensor, Tensor]:
    """PPO clipped surrogate with an asymmetric clip range (DAPO's clip-higher: 0.2 / 0.28).

    logprobs (B, L) of the current policy (with grad); old_logprobs (B, L) of the policy that the
    update started from; advantages (B,) per sequence or (B, L) per token. Returns per-token loss
    (B, L) and a float mask (B, L) of the tokens where the clip was active (its gradient is zero there).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages if advantages.dim() == 2 else advantages[:, None]
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    return torch.maximum(unclipped, clipped), (clipped > unclipped).float()


def sft_loss(logprobs: Tensor) -> Tensor:
    """Negative log-likelihood per token. logprobs (B, L). Returns (B, L)."""
    return -logprobs


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token KL(current || reference), the non-negative unbiased 'k3' estimator (Schulman 2020).

    logprobs, ref_logprobs (B, L). Returns (B, L), >= 0, with gradient through `logprobs`.
    """
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1.0


def truncated_is_weight(old_logprobs: Tensor, rollout_logprobs: Tensor, cap: float = 2.0) -> Tensor:
    """Truncated importance weight min(pi_learner / pi_rollout, cap) per token, no gradient.

    Corrects for the rollout engine sampling from slightly different probabilities than the learner
    computes (bf16 kernels, stale weights in async mode). old_logprobs and rollout_logprobs (B, L).
    Returns (B, L).
    """
    return torch.exp(old_logprobs - rollout_logprobs).clamp(max=cap).detach()


def token_weights(mask: Tensor, choice: Tensor, choice_weight: float) -> Tensor:
    """Loss weight per token: `choice_weight` on response position 0 of the rows where `choice` (B,) is
    set (the budget-choice token in policy mode, Thinkless' decoupled control-token loss), 1 elsewhere.
    mask (B, L). Returns (B, L)."""
    weights = mask.float().clone()
    weights[:, 0] *= torch.where(choice.bool(), choice_weight, 1.0)
    return weights


def _token_mean(loss: Tensor, mask: Tensor, denominator: float) -> Tensor:
    return masked_sum(loss, mask) / denominator


def _sequence_mean(loss: Tensor, mask: Tensor, denominator: float) -> Tensor:
    per_seq = torch.where(mask.bool(), loss, 0.0).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_seq.sum() / denominator


# name -> (aggregate(loss (B, L), mask (B, L), denominator) -> scalar, what the denominator counts)
AGGREGATIONS: dict[str, tuple[Callable[[Tensor, Tensor, float], Tensor], str]] = {
    "token_mean": (_token_mean, "tokens"),  # every token weighs the same (DAPO, Accordion)
    "sequence_mean": (_sequence_mean, "sequences"),  # every sample weighs the same (original GRPO)
}


def aggregate(loss: Tensor, mask: Tensor, mode: str, denominator: float) -> Tensor:
    """Reduce a per-token loss (B, L) to this micro-batch's share of the batch loss.

    `denominator` is the number of tokens (token_mean) or sequences (sequence_mean) in the whole batch
    across ranks and micro-batches, so the shares sum to the batch mean.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {mode!r}: expected one of {sorted(AGGREGATIONS)}")
    return AGGREGATIONS[mode][0](loss, mask, denominator)

