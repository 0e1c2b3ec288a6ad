"""The batch the learners train on, and how it is split over ranks and micro-batches.

One `Sample` per trained sequence: an Unfold trajectory, one Fold segment (its prompt is the folded
context it was generated after), or an SFT trace. The RL loop may send plain dicts with the same keys.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

import torch


class BatchError(ValueError):
    """A batch the learner refuses, with the sample index and field named."""


@dataclass(frozen=True)
class Sample:
    """One trained sequence; the loss covers `response_ids` only.

    Logprob lists, when given, have one float per response token:
    - `old_logprobs`: the learner's logprobs before this update (PPO ratio denominator). None: the
      update is on-policy and the current logprobs, detached, are used (ratio 1, plain policy gradient).
    - `rollout_logprobs`: what the generator sampled with; with `learner.tis_cap` they give the
      truncated importance weight against `old_logprobs` (or the current logprobs).
    `advantage` is unused by the SFT loss. `first_advantage`, when given, replaces it on response token 0:
    the budget-choice token of a policy-mode (`<COMP_AUTO>`) rollout, which CHRPO rewards on its own.
    """

    prompt_ids: list[int]
    response_ids: list[int]
    advantage: float = 0.0
    first_advantage: float | None = None
    old_logprobs: list[float] | None = None
    rollout_logprobs: list[float] | None = None

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


LOGPROB_FIELDS = ("old_logprobs", "rollout_logprobs")
SAMPLE_KEYS = {f.name for f in fields(Sample)}


def as_samples(batch: Sequence[Sample | Mapping[str, Any]]) -> list[Sample]:
    """Accept `Sample`s or dicts with the same keys; an unknown or missing key names the sample."""
    out = []
    for i, item in enumerate(batch):
        if isinstance(item, Sample):
            out.append(item)
            continue
        unknown = set(item) - SAMPLE_KEYS
        if unknown:
            raise BatchError(f"sample {i}: unknown key(s) {sorted(unknown)}; expected {sorted(SAMPLE_KEYS)}")
        try:
            out.append(Sample(**item))
        except TypeError as err:
            raise BatchError(f"sample {i}: {err}") from None
    return out


def validate(samples: Sequence[Sample], max_length: int) -> list[int]:
    """Check a batch before any compute; returns the indices of samples longer than `max_length`.

    Raises BatchError for an empty batch, an empty response, a non-finite advantage or logprob, or a
    logprob list of the wrong length.
    """
    if not samples:
        raise BatchError("empty batch: nothing to train on")
    too_long = []
    for i, s in enumerate(samples):
        if not s.response_ids:
            raise BatchError(f"sample {i}: response_ids is empty (the loss needs at least one response token)")
        if not s.prompt_ids:
            raise BatchError(f"sample {i}: prompt_ids is empty (the first response token needs a context)")
        if not math.isfinite(s.advantage) or (s.first_advantage is not None and not math.isfinite(s.first_advantage)):
            raise BatchError(f"sample {i}: advantage is {s.advantage}, first_advantage {s.first_advantage}")
        for name in LOGPROB_FIELDS:
            values = getattr(s, name)
            if values is None:
                continue
            if len(values) != len(s.response_ids):
                raise BatchError(f"sample {i}: {name} has {len(values)} values for {len(s.response_ids)} response tokens")
            if not all(math.isfinite(v) for v in values):
                raise BatchError(f"sample {i}: {name} holds a non-finite value")
        if len(s) > max_length:
            too_long.append(i)
    return too_long


def split_by_tokens(lengths: Sequence[int], world_size: int, micro_batch_tokens: int) -> list[list[list[int]]]:
    """Plan `[rank][micro_batch] -> sample indices` so ranks get equal tokens, not equal counts.

    Longest-first greedy onto the rank with the fewest tokens; then each rank's samples, longest first,
    fill micro-batches whose padded size (count x longest) stays within `micro_batch_tokens` (a longer
    sample gets a micro-batch of its own). Every rank gets the same number of micro-batches — short
    ranks are padded with empty ones — because ZeRO's collectives run once per forward/backward.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    shards: list[list[int]] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for i in order:
        rank = min(range(world_size), key=lambda r: (load[r], r))
        shards[rank].append(i)
        load[rank] += lengths[i]
    plan = []
    for shard in shards:
        micro: list[list[int]] = []
        for i in shard:  # already longest first, so the first sample sets the padded length
            if micro and (len(micro[-1]) + 1) * lengths[micro[-1][0]] <= micro_batch_tokens:
                micro[-1].append(i)
            else:
                micro.append([i])
        plan.append(micro)
    depth = max(len(m) for m in plan)
    return [m + [[] for _ in range(depth - len(m))] for m in plan]


def collate(samples: Sequence[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors of a micro-batch; an empty list gives one masked dummy row.

    Returns input_ids, attention_mask (B, T); per response position (B, L): response_ids, mask,
    advantage (each sample's, `first_advantage` on token 0 where given), and each logprob field present
    in every sample (zeros where padded); `choice` (B,): 1 where token 0 is a budget choice (`first_advantage`).
    `positions` (B, L) indexes the logits that predict each response token (T-axis index - 1).
    """
    if not samples:
        samples = [Sample(prompt_ids=[pad_id], response_ids=[pad_id])]
        dummy = True
    else:
        dummy = False
    T = max(len(s) for s in samples)
    L = max(len(s.response_ids) for s in samples)
    B = len(samples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention = torch.zeros(B, T, dtype=torch.long)
    positions = torch.zeros(B, L, dtype=torch.long)
    response = torch.full((B, L), pad_id, dtype=torch.long)
    mask = torch.zeros(B, L)
    advantage = torch.zeros(B, L)
    choice = torch.zeros(B)
    out: dict[str, torch.Tensor] = {}
    for b, s in enumerate(samples):
        ids = s.prompt_ids + s.response_ids
        p, r = len(s.prompt_ids), len(s.response_ids)
        input_ids[b, : len(ids)] = torch.tensor(ids)
        attention[b, : len(ids)] = 1
        positions[b, :r] = torch.arange(p - 1, p + r - 1)
        response[b, :r] = torch.tensor(s.response_ids)
        mask[b, :r] = 0.0 if dummy else 1.0
        advantage[b, :r] = s.advantage
        if s.first_advantage is not None:
            advantage[b, 0] = s.first_advantage
            choice[b] = 1.0
    for name in LOGPROB_FIELDS:
        if all(getattr(s, name) is not None for s in samples):
            values = torch.zeros(B, L)
            for b, s in enumerate(samples):
                values[b, : len(s.response_ids)] = torch.tensor(getattr(s, name))
            out[name] = values
    out.update(
        input_ids=input_ids, attention_mask=attention, positions=positions, response_ids=response, mask=mask,
        advantage=advantage, choice=choice,
    )
    return out
