"""`accordion bench sft`: tokens/s of `accordion sft`'s training step against a bare PyTorch loop.

Both arms train the same model from the same initial weights on the same SFT batches (the config's
`sft` section: traces per step, Fold share, budgets), in the same precision (`learner.precision`,
`auto` resolved on this machine) and with the same token-bounded micro-batches:
- `bare`: one process, plain `torch.optim.AdamW`, every core as a torch thread;
- `ours`: `LearnerGroup.train_step(batch, "sft")` with 1 and with 2 DeepSpeed ranks (Ray actors, gloo),
  timed from the driver (so the batch's trip to the ranks counts).
Tokens are real (prompt + response) tokens, padding excluded. The first `--warmup` steps are not timed.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from benches import bench_parser, figure, report
from configs import config_from_args


def main(argv: list[str], prog: str) -> int:
    parser = bench_parser(prog, __doc__)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per arm (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per arm (default: %(default)s)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="learner ranks to measure (default: 1 2)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)

    import ray
    from transformers import AutoTokenizer

    from learners.sft import TraceStream
    from models.build import resolve_model
    from models.precision import learner_precision

    precision = learner_precision(cfg.learner.precision)
    with tempfile.TemporaryDirectory() as tmp:
        model = resolve_model(cfg.model, tmp)
        tokenizer = AutoTokenizer.from_pretrained(model)
        stream = TraceStream(tokenizer, cfg.task, cfg.sft)
        batches = [stream.batch(i * cfg.sft.traces_per_step, cfg.sft.traces_per_step)
                   for i in range(args.warmup + args.steps)]
        tokens = sum(len(s) for b in batches[args.warmup:] for s in b)
        result = {"steps": args.steps, "tokens_per_step": tokens / args.steps,
                  "micro_batch_tokens": cfg.learner.micro_batch_tokens, "traces_per_step": cfg.sft.traces_per_step}
        seconds = bare_loop(model, cfg, precision, batches, args.warmup)
        result["bare_tokens_per_s"] = tokens / seconds
        print(f"bare PyTorch, 1 process, {os.cpu_count()} threads ({precision}): {tokens / seconds:,.0f} tokens/s")
        ray.init(address=os.environ.get("RAY_ADDRESS", "local"), include_dashboard=False, log_to_driver=False)
        try:
            for ranks in args.ranks:
                seconds = group_loop(model, cfg, ranks, batches, args.warmup)
                result[f"ours_{ranks}_ranks_tokens_per_s"] = tokens / seconds
                print(f"accordion sft, {ranks} rank(s) ({precision}): {tokens / seconds:,.0f} tokens/s")
        finally:
            ray.shutdown()
    best = max(args.ranks, key=lambda r: result[f"ours_{r}_ranks_tokens_per_s"])
    result["best_ranks"] = best
    result["ratio"] = result[f"ours_{cfg.cluster.learners}_ranks_tokens_per_s"] / result["bare_tokens_per_s"] \
        if cfg.cluster.learners in args.ranks else result[f"ours_{best}_ranks_tokens_per_s"] / result["bare_tokens_per_s"]
    figures = [figure(f"SFT tokens/s, accordion sft with {r} rank(s) vs a bare PyTorch loop",
                      result[f"ours_{r}_ranks_tokens_per_s"], result["bare_tokens_per_s"]) for r in args.ranks]
    report(args.out, result, figures, precision)
    return 0


def bare_loop(model_path: Path, cfg, precision: str, batches: list, warmup: int) -> float:
    """Seconds for the timed steps of a plain single-process loop: the same micro-batches and SFT loss."""
    import torch
    from transformers import AutoModelForCausalLM

    from learners.batch import collate, split_by_tokens

    torch.manual_seed(cfg.learner.seed)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    optim = cfg.sft.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
    pad = model.config.pad_token_id
    start = 0.0
    for step, batch in enumerate(batches):
        if step == warmup:
            start = time.perf_counter()
        plan = split_by_tokens([len(s) for s in batch], 1, cfg.learner.micro_batch_tokens)[0]
        denominator = sum(len(s.response_ids) for s in batch)
        for indices in plan:
            mb = collate([batch[i] for i in indices], pad)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"], use_cache=False).logits
            picked = torch.gather(logits, 1, mb["positions"][..., None].expand(-1, -1, logits.shape[-1])).float()
            logprobs = torch.gather(picked, 2, mb["response_ids"][..., None]).squeeze(-1) - torch.logsumexp(picked, -1)
            (-(logprobs * mb["mask"]).sum() / denominator).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - start


def group_loop(model_path: Path, cfg, ranks: int, batches: list, warmup: int) -> float:
    from learners.group import LearnerGroup
    from learners.sft import sft_learner

    group = LearnerGroup(model_path, sft_learner(cfg), ranks=ranks, cpus=max(1, (os.cpu_count() or 2) // ranks))
    try:
        start = 0.0
        for step, batch in enumerate(batches):
            if step == warmup:
                start = time.perf_counter()
            group.train_step(batch, "sft")
        return time.perf_counter() - start
    finally:
        group.shutdown()
