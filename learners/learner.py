"""One DeepSpeed rank: a transformers causal LM under ZeRO-2/3, trained on `Sample` batches.

A plain class: `Learner(model_path, cfg, rank=0, world_size=1)` works in one process without Ray;
`learners.group.LearnerGroup` runs one per Ray actor. Every rank receives the whole batch and takes
its own share of the same deterministic token-balanced plan, so no rank needs to hear from another
before the first forward, and all ranks run the same number of forwards/backwards (ZeRO's
collectives require it).
"""
from __future__ import annotations

import base64
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
import torch.distributed as dist

from configs.schema import LearnerConfig, OptimConfig
from learners import algos
from learners.batch import BatchError, Sample, as_samples, collate, split_by_tokens, validate
from models.precision import ENGINE_DTYPE, Precision, learner_precision, machine
from models.sync import Sent, SyncBackend, make_backend

STATE_FILE = "training_state.json"
OPTIMIZER_DIR = "optimizer"
Loss = Literal["policy", "sft"]
log = logging.getLogger(__name__)
STALE_BUILD_LOCK_S = 300  # building DeepSpeed's shared-memory op took ~20 s on 2 cores


def clear_stale_build_lock(extension: str = "deepspeed_shm_comm", older_than_s: float = STALE_BUILD_LOCK_S) -> bool:
    """Removes torch's build lock of `extension` when older than `older_than_s`; True if it did.

    DeepSpeed JIT-builds its CPU shared-memory op when a rank starts in a new environment, under a lock
    file that only the builder removes: a job stopped while it built left the lock, and every later start
    waited on it silently, forever."""
    from torch.utils.cpp_extension import _get_build_directory

    lock = Path(_get_build_directory(extension, verbose=False)) / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if age <= older_than_s:
        return False
    log.warning("removing %s, left %.0f s ago by a build of %s that did not finish", lock, age, extension)
    lock.unlink(missing_ok=True)
    return True


class NonFiniteLossError(RuntimeError):
    """A loss was NaN or infinite (learner.on_nonfinite=error); the step was not applied."""


def lr_factor(step: int, cfg: OptimConfig) -> float:
    """Learning-rate multiplier at optimizer step `step`: linear warm-up, then cosine or constant."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if not cfg.decay_steps:
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / cfg.decay_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def ds_config(cfg: LearnerConfig, precision: Precision) -> dict[str, Any]:
    """The DeepSpeed config; accumulation is ours (one optimizer step per pass over a batch): DeepSpeed sees 1."""
    zero: dict[str, Any] = {"stage": cfg.zero_stage, "overlap_comm": False}
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,  # torch AdamW: DeepSpeedCPUAdam compiles for ~100 s
        "steps_per_print": 1 << 30,
    }


class Learner:
    """One rank. `train_step`, `recompute_logprobs`, `full_state`, `save` and `load` are collective:
    every rank of the group must call them, in the same order, with the same arguments."""

    def __init__(self, model_path: str | Path, cfg: LearnerConfig, rank: int = 0, world_size: int = 1,
                 master_addr: str = "127.0.0.1", master_port: int = 29500, threads: int | None = None):
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK=os.environ.get("LOCAL_RANK", "0"))
        if threads:
            torch.set_num_threads(threads)
        import deepspeed
        from deepspeed.accelerator import get_accelerator
        from transformers import AutoModelForCausalLM, AutoTokenizer

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        clear_stale_build_lock()
        deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name(),
                                   auto_mpi_discovery=False, verbose=False)
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.precision = learner_precision(cfg.precision)
        self.model_path = Path(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        torch.manual_seed(cfg.seed)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        optim = cfg.optim
        optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, betas=optim.betas,
                                      weight_decay=optim.weight_decay)
        # The schedule counts batches: the optimizer steps of one batch's PPO epochs share its lr.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                      lambda step: lr_factor(step // cfg.ppo_epochs, optim))
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config(cfg, self.precision))
        self.device = self.engine.device
        # verl's colocated reference: a frozen whole copy of the starting weights on every rank (no ZeRO
        # sharding), so the KL term costs one no-grad forward per micro-batch and no extra actor.
        self.reference = None
        if cfg.kl_coef > 0:
            dtype = getattr(torch, ENGINE_DTYPE[self.precision])
            self.reference = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(self.device)
            self.reference.eval().requires_grad_(False)
        self.step = 0  # optimizer steps applied
        self._sync: SyncBackend | None = None  # rank 0's end of the weight sync, from `open_sync`

    def describe(self) -> dict[str, str]:
        """The precision this rank trains in and the hardware it runs on (`models.precision`)."""
        return {"precision": self.precision, "machine": machine()}

    # ---- batches -------------------------------------------------------------------------------

    def _plan(self, batch: Sequence[Sample | Mapping]) -> tuple[list[Sample], list[list[int]], int]:
        """Validate, drop over-long samples if configured, and take this rank's micro-batches."""
        samples = as_samples(batch)
        too_long = validate(samples, self.cfg.max_length)
        if too_long and self.cfg.on_too_long == "error":
            i = too_long[0]
            raise BatchError(f"sample {i}: {len(samples[i])} tokens exceeds learner.max_length {self.cfg.max_length} "
                             f"({len(too_long)} such samples; learner.on_too_long=skip leaves them out)")
        dropped = set(too_long)
        keep = [i for i in range(len(samples)) if i not in dropped]
        if not keep:
            raise BatchError(f"every sample exceeds learner.max_length {self.cfg.max_length}: nothing to train on")
        plan = split_by_tokens([len(samples[i]) for i in keep], self.world_size, self.cfg.micro_batch_tokens)
        return samples, [[keep[j] for j in micro] for micro in plan[self.rank]], len(too_long)

    def _logprobs(self, mb: dict[str, torch.Tensor], model: torch.nn.Module | None = None) -> torch.Tensor:
        """Log-probabilities of the response tokens under `model` (the trained one by default), (B, L)
        float32, with grad if enabled."""
        model = self.engine if model is None else model
        logits = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"], use_cache=False).logits
        # Only the positions that predict a response token: (B, L, V), not (B, T, V), in float32.
        picked = torch.gather(logits, 1, mb["positions"][..., None].expand(-1, -1, logits.shape[-1])).float()
        token = torch.gather(picked, 2, mb["response_ids"][..., None]).squeeze(-1)
        return token - torch.logsumexp(picked, dim=-1)

    def _to_device(self, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in collate(samples, self.tokenizer.pad_token_id).items()}

    def _all_reduce(self, tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(tensor, op=op)
        return tensor

    # ---- training ------------------------------------------------------------------------------

    def train_step(self, batch: Sequence[Sample | Mapping], loss: Loss = "policy") -> dict[str, float]:
        """`learner.ppo_epochs` passes over the whole `batch` (all ranks' shares, accumulated over micro-batches),
        one optimizer step each; the SFT loss takes one.

        `loss="policy"`: clipped PPO loss with the configured corrections, its ratio's denominator the logprobs
        before the first pass (or the samples' `old_logprobs`); `"sft"`: NLL of the responses. Returns the same
        metrics on every rank (summed over ranks; loss, kl and grad_norm the mean over passes): loss,
        clip_fraction, kl, grad_norm, lr, tokens, samples, skipped_samples, step_applied (steps applied),
        time_s.
        """
        start = time.perf_counter()
        cfg = self.cfg
        samples, micro_batches, too_long = self._plan(batch)
        kept = [s for s in samples if len(s) <= cfg.max_length]
        counts = {"tokens": sum(len(s.response_ids) for s in kept), "sequences": len(kept)}
        denominator = counts[algos.AGGREGATIONS[cfg.loss_aggregation][1]]
        epochs = cfg.ppo_epochs if loss == "policy" else 1
        olds: list[torch.Tensor | None] = [None] * len(micro_batches)
        passes = [self._epoch(samples, micro_batches, loss, denominator, olds) for _ in range(epochs)]
        totals = sum(p[0] for p in passes)
        trained = int(totals[3])  # tokens, over every pass
        metrics = {
            "loss": float(totals[0]) / epochs,
            "clip_fraction": float(totals[1]) / max(trained, 1),
            "kl": float(totals[2]) / max(trained, 1),
            "grad_norm": sum(p[1] for p in passes) / epochs,
            "lr": passes[0][2],
            "tokens": trained // epochs,
            "samples": len(kept) - int(passes[0][0][4]),
            "skipped_samples": int(passes[0][0][4]) + too_long,
            "step_applied": float(sum(p[3] for p in passes)),
            "time_s": time.perf_counter() - start,
        }
        return metrics

    def _epoch(self, samples: list[Sample], micro_batches: list[list[int]], loss: Loss, denominator: int,
               olds: list[torch.Tensor | None]) -> tuple[torch.Tensor, float, float, bool]:
        """One pass over this rank's micro-batches and one optimizer step. `olds[k]`: micro-batch k's logprobs
        before the first pass, filled by it. Returns the sums over ranks (loss, clipped tokens, kl, trained
        tokens, skipped samples), the gradient norm, the lr and whether the step was applied."""
        cfg = self.cfg
        sums = torch.zeros(5, dtype=torch.float64)
        nonfinite = []
        self.engine.train()
        for k, indices in enumerate(micro_batches):
            self.engine.set_gradient_accumulation_boundary(k == len(micro_batches) - 1)
            mb = self._to_device([samples[i] for i in indices])
            logprobs = self._logprobs(mb)
            if olds[k] is None:
                olds[k] = mb.get("old_logprobs", logprobs.detach())
            mb["old_logprobs"] = olds[k]
            share, clipped, kl = self._loss(mb, logprobs, loss, denominator)
            finite = self._all_reduce(torch.isfinite(share).float().reshape(1), dist.ReduceOp.MIN)
            if not bool(finite):  # a host sync, but the decision must be the same on every rank
                # Same backward on every rank (ZeRO's hooks are collective), but with zero gradient.
                share = torch.where(torch.isfinite(logprobs), logprobs, 0.0).sum() * 0.0
                sums[4] += len(indices)
                nonfinite.append(k)
            else:
                sums += torch.stack([share.detach().double().cpu(), clipped.double().cpu(), kl.double().cpu(),
                                     mb["mask"].sum().double().cpu(), torch.zeros((), dtype=torch.float64)])
            # DeepSpeed averages gradients over ranks; the shares already sum to the batch mean.
            self.engine.backward(share * self.world_size)
        totals = self._all_reduce(sums)
        trained = int(totals[3])
        refuse = bool(nonfinite) and cfg.on_nonfinite == "error"
        if refuse or not trained:
            # Step with lr 0: the weights stay bit-identical and DeepSpeed's accumulation ends cleanly
            # (Adam's moments do see this step's finite gradients). The scheduler restores lr next step.
            for group in self.optimizer.param_groups:
                group["lr"] = 0.0
        lr = self.optimizer.param_groups[0]["lr"]
        # DeepSpeed reports the norm only from its ZeRO and bf16 optimizers; ZeRO-0 in fp32 (the tiny
        # model's default) leaves the gradients whole in `.grad`, all-reduced, until the step.
        whole = [p.grad for p in self.engine.module.parameters() if p.grad is not None] if cfg.zero_stage == 0 else []
        own_norm = float(torch.nn.utils.get_total_norm(whole)) if whole else float("nan")
        self.engine.step()
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = own_norm if grad_norm is None else grad_norm
        if refuse:
            raise NonFiniteLossError(f"non-finite loss at step {self.step} in micro-batch(es) {nonfinite}; the step "
                                     "was not applied (learner.on_nonfinite=skip trains on the rest)")
        if nonfinite:
            log.warning("step %d: non-finite loss in micro-batch(es) %s; their samples are left out", self.step, nonfinite)
        applied = trained > 0
        self.step += applied
        return totals, float(grad_norm), lr, applied

    def _loss(self, mb: dict[str, torch.Tensor], logprobs: torch.Tensor, loss: Loss,
              denominator: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This micro-batch's share of the batch loss, and its clipped-token and KL sums (no grad)."""
        cfg, mask = self.cfg, mb["mask"]
        zero = torch.zeros((), device=logprobs.device)
        if loss == "sft":
            per_token = algos.sft_loss(logprobs)
            return algos.aggregate(per_token, mask, cfg.loss_aggregation, denominator), zero, zero
        if loss != "policy":
            raise ValueError(f"unknown loss {loss!r}: expected 'policy' or 'sft'")
        old = mb["old_logprobs"]
        per_token, clipped = algos.policy_loss(logprobs, old, mb["advantage"], cfg.clip_low, cfg.clip_high)
        if cfg.tis_cap is not None and "rollout_logprobs" in mb:
            per_token = per_token * algos.truncated_is_weight(old, mb["rollout_logprobs"], cfg.tis_cap)
        kl_sum = zero
        if self.reference is not None:
            with torch.no_grad():
                reference = self._logprobs(mb, self.reference)
            kl = algos.kl_penalty(logprobs, reference)
            per_token = per_token + cfg.kl_coef * kl
            kl_sum = algos.masked_sum(kl.detach(), mask)
        per_token = per_token * algos.token_weights(mask, mb["choice"], cfg.choice_weight)
        share = algos.aggregate(per_token, mask, cfg.loss_aggregation, denominator)
        return share, algos.masked_sum(clipped, mask), kl_sum

    @torch.no_grad()
    def recompute_logprobs(self, batch: Sequence[Sample | Mapping]) -> list[list[float] | None]:
        """Logprobs of each sample's response tokens under the current weights; entries of samples
        on other ranks are None (the group merges them)."""
        samples, micro_batches, _ = self._plan(batch)
        out: list[list[float] | None] = [None] * len(samples)
        self.engine.eval()
        for indices in micro_batches:
            logprobs = self._logprobs(self._to_device([samples[i] for i in indices])).cpu()
            for row, i in enumerate(indices):
                out[i] = logprobs[row, : len(samples[i].response_ids)].tolist()
        return out

    # ---- weights and checkpoints ---------------------------------------------------------------

    def full_state(self) -> dict[str, torch.Tensor] | None:
        """Full weights (HF names, compute dtype, on CPU) on rank 0, None elsewhere; ZeRO-3 gathers."""
        import deepspeed

        params = dict(self.engine.module.named_parameters())
        with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None,
                                               enabled=self.cfg.zero_stage == 3):
            if self.rank:
                return None
            return {name: p.detach().to("cpu", copy=True) for name, p in params.items()}

    # ---- weight sync to the generators (`models.sync`; rank 0 is the sender, the others help gather) ----

    def open_sync(self, backend: str) -> dict[str, Any] | None:
        """Rank 0: a fresh sender end of `backend` (dropping the old one) and what the receivers need to
        join it; None elsewhere."""
        if self.rank:
            return None
        self._sync = make_backend(backend)
        return self._sync.prepare(os.environ["MASTER_ADDR"])

    def join_sync(self, world_size: int, meta: dict[str, Any]) -> None:
        """Rank 0 joins as the sync's rank 0; blocks until every member joined (a group backend)."""
        if not self.rank:
            self._sync.build_topology(0, world_size, meta)

    def send_weights(self, bucket_bytes: int) -> Sent | None:
        """Stream the full weights to the receivers; rank 0 returns the send's `Sent`. Collective (ZeRO-3
        gathers), and the receivers of a collective backend must be receiving."""
        state = self.full_state()
        if state is None:
            return None
        return self._sync.send(state.items(), bucket_bytes)

    def sent_weights(self) -> tuple[list, str] | None:
        """Rank 0: the weights last sent, as object-store refs, and their checksum (`SyncBackend.stored`)."""
        return None if self.rank else self._sync.stored()

    def finalize_sync(self) -> None:
        """Rank 0: every receiver has the last send; release what it held (`SyncBackend.finalize`)."""
        if not self.rank:
            self._sync.finalize()

    def save(self, path: str | Path, state: Mapping[str, Any] | None = None) -> None:
        """A Hugging Face folder (weights, config, tokenizer) that vLLM and transformers load as is,
        plus `training_state.json` (step, caller's `state`, RNG) and the DeepSpeed optimizer state in
        `optimizer/`. Written to a temporary name and renamed, so a crash never leaves half a checkpoint."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        weights = self.full_state()
        if self.rank == 0:
            if tmp.is_dir():  # left by a save that a crash cut short
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            self.engine.module.save_pretrained(tmp, state_dict=weights)
            self.tokenizer.save_pretrained(tmp)
        self._barrier()
        self.engine.save_checkpoint(str(tmp / OPTIMIZER_DIR), tag="state")
        if self.rank == 0:
            rng = base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()
            record = {"step": self.step, "world_size": self.world_size, "zero_stage": self.cfg.zero_stage,
                      "torch_rng": rng, **(state or {})}
            (tmp / STATE_FILE).write_text(json.dumps(record, indent=1))
            if path.exists():
                old = path.with_name(path.name + ".old")
                shutil.rmtree(old, ignore_errors=True)
                path.rename(old)
                tmp.rename(path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(path)
        self._barrier()

    def load(self, path: str | Path) -> dict[str, Any]:
        """Restore weights, optimizer, schedule, step and RNG from `save`; returns the saved state."""
        path = Path(path)
        record_file = path / STATE_FILE
        if not record_file.is_file():
            raise FileNotFoundError(f"{path}: no {STATE_FILE} (not a learner checkpoint)")
        record = json.loads(record_file.read_text())
        for key, mine in (("world_size", self.world_size), ("zero_stage", self.cfg.zero_stage)):
            if record[key] != mine:
                raise ValueError(f"{path}: saved with {key}={record[key]}, this learner has {mine} "
                                 f"(the weights alone load with model.path={path})")
        loaded, _ = self.engine.load_checkpoint(str(path / OPTIMIZER_DIR), tag="state",
                                                load_optimizer_states=True, load_lr_scheduler_states=True)
        if loaded is None:
            raise FileNotFoundError(f"{path / OPTIMIZER_DIR}: DeepSpeed checkpoint missing or unreadable")
        rng = torch.frombuffer(bytearray(base64.b64decode(record["torch_rng"])), dtype=torch.uint8)
        torch.set_rng_state(rng)
        self.step = record["step"]
        return {k: v for k, v in record.items() if k != "torch_rng"}

    def _barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

