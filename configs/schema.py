"""Typed configuration: one frozen section per role, every field documented and bounded.

A YAML file under `configs/` sets only what differs from these defaults. Each actor receives
only its own section, never the whole tree.
"""
from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


BUDGETS = (20, 40, 60, 80, 100)
"""The budget ratios, in percent of full-length reasoning, that have a token (`<COMP_20>` ... `<COMP_100>`)."""
Budget = Union[int, Literal["auto"]]
"""A budget token: a ratio in `BUDGETS` (`<COMP_40>`) or `auto` (`<COMP_AUTO>`, policy mode)."""


def known_budgets(values, auto: bool = True):
    """Field validator body: every budget is a ratio of `BUDGETS` (or `auto` where allowed)."""
    allowed = [*BUDGETS, "auto"] if auto else list(BUDGETS)
    items = values if isinstance(values, tuple) else (values,)
    unknown = [b for b in items if b is not None and b not in allowed]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a budget: expected one of {', '.join(map(str, allowed))}")
    return values


class Section(BaseModel):
    """Base of every config section: immutable, and an unknown key is an error, not a silent no-op."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ModelConfig(Section):
    """The policy model. `path` names a Hugging Face folder; empty means the built-in tiny model."""

    path: str = ""
    """Folder with a saved causal LM and tokenizer. Empty: build the tiny model into the run folder."""
    # The dimensions below build the tiny model. With `path` set they are read only by the memory plan
    # (`accordion plan`), and only while `path` has no config.json yet: planning before a download.
    architecture: Literal["qwen3", "qwen2", "llama"] = "qwen3"
    """Planning a `path` not yet there: its architecture (the tiny model is always qwen3)."""
    hidden_size: int = Field(256, ge=32, le=16384)
    """Width of the residual stream."""
    num_layers: int = Field(4, ge=1, le=128)
    """Number of decoder layers."""
    num_heads: int = Field(4, ge=1, le=128)
    """Attention heads (hidden_size must divide evenly)."""
    num_kv_heads: int = Field(4, ge=1, le=128)
    """Key/value heads for grouped-query attention."""
    head_dim: int = Field(0, ge=0, le=1024)
    """Width of one attention head; 0: hidden_size / num_heads."""
    intermediate_size: int = Field(768, ge=32, le=65536)
    """Width of the MLP."""
    vocab_size: int = Field(0, ge=0)
    """Planning a `path` not yet there: its vocabulary (format tokens included). 0: the tiny tokenizer's."""
    tie_word_embeddings: bool = True
    """The LM head shares the embedding matrix."""
    max_position_embeddings: int = Field(2048, ge=128, le=131072)
    """Longest sequence (prompt + response) the model can address."""
    seed: int = 0
    """Seed of the random initialisation."""

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        return self


class TaskConfig(Section):
    """The training data: the built-in arithmetic task or one of the real benchmark sets."""

    name: Literal["arithmetic", "math500", "gsm8k", "aime24", "amc23"] = "arithmetic"
    """`arithmetic` is generated on the fly; the others are read from `data_dir`."""
    data_dir: str = "../shared/data"
    """Folder holding the benchmark JSONL files (relative paths are from the working directory)."""
    min_steps: int = Field(2, ge=1, le=12)
    """Arithmetic: fewest operations per problem."""
    max_steps: int = Field(6, ge=1, le=12)
    """Arithmetic: most operations per problem."""
    max_operand: int = Field(9, ge=1, le=99)
    """Arithmetic: operands are drawn from 1..max_operand."""
    lax_fraction: float = Field(0.0, ge=0.0, le=1.0)
    """Arithmetic: fraction of gold step summaries that drop the running state (Fold then fails)."""
    train_size: int = Field(20000, ge=1)
    """Arithmetic: problems in the training split."""
    eval_size: int = Field(200, ge=1)
    """Problems in the held-out split."""
    seed: int = 0
    """Seed of the problem generator; the held-out split uses a disjoint stream."""

    @model_validator(mode="after")
    def _step_range(self) -> TaskConfig:
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps {self.min_steps} is larger than max_steps {self.max_steps}")
        return self


class ClusterConfig(Section):
    """Placement: how many actors of each role, and what each one reserves."""

    generators: int = Field(1, ge=1)
    """vLLM generator actors (one engine each)."""
    generator_cpus: float = Field(1.0, ge=0.0)
    generator_gpus: float = Field(0.0, ge=0.0)
    learners: int = Field(2, ge=1)
    """DeepSpeed ranks (one actor each)."""
    learner_cpus: float = Field(0.5, ge=0.0)
    learner_gpus: float = Field(0.0, ge=0.0)
    max_learner_restarts: int = Field(2, ge=0)
    """How often the RL job rebuilds its learners (and generators) from the last checkpoint after a learner
    rank dies, before it stops with the rank, the cause and the `--resume` command."""
    reward_workers: int = Field(1, ge=1)
    reward_cpus: float = Field(0.0, ge=0.0)
    """Reward scoring is light; 0 lets the workers share cores with the other roles."""
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """Ray placement-group strategy for each role's bundles."""
    placement_timeout_s: float = Field(120.0, gt=0.0)
    """How long to wait for the placement groups before giving up."""
    colocate: bool = False
    """Generation and training take turns on the same devices (the 48 GB mode): the generators sleep
    while the learners train (vLLM sleep mode level 1 on GPUs: weights offloaded, KV cache dropped) and
    wake before the weight sync. Needs rl.max_staleness 0. On CPUs, where vLLM has no sleep mode, only
    the turns are kept."""
    gpu_memory_gib: float = Field(0.0, ge=0.0)
    """Memory of one GPU, for the memory plan that `accordion plan` prints and `accordion train` checks
    before it starts a GPU run. 0: what torch reports for this machine's first GPU."""


class TrackingConfig(Section):
    """MLflow experiment tracking."""

    uri: str = ""
    """Tracking URI. Empty: $MLFLOW_TRACKING_URI, else sqlite:///<run_dir>/mlflow.db."""
    experiment: str = "accordion-rl"
    run_name: str = ""
    """Display name of the MLflow run; empty lets MLflow pick one."""
    log_at: Literal["step", "checkpoint"] = "step"
    """When an RL step's metrics go to MLflow. `step`: as each step ends (live curves; a step redone after a
    crash, from the last checkpoint, is logged again). `checkpoint`: when the step's checkpoint is written
    (every `rl.save_every` steps), so MLflow holds each step once, from the lineage that survived."""


class GeneratorConfig(Section):
    """A vLLM generator: sampling, Fold limits and the engine's memory (one engine per generator actor)."""

    temperature: float = Field(1.0, ge=0.0, le=2.0)
    """Sampling temperature (0: greedy; vLLM takes at most 2). A rollout request may override it."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass."""
    mask_format: bool = True
    """Keep the model from writing format tokens where they cannot stand (`actors.fold.unwritable_tokens`:
    a budget token or `<think>` inside the reasoning). Learner log-probabilities are the unmasked model's."""
    max_tokens: int = Field(1536, ge=1, le=131072)
    """Unfold: most tokens of one response."""
    segment_tokens: int = Field(512, ge=1, le=131072)
    """Fold: most tokens of one segment (public Accordion code: 6144)."""
    max_segments: int = Field(8, ge=1, le=64)
    """Fold: most segments of one trajectory; reaching it without an answer is 'unfinished'."""
    max_prompt_tokens: int = Field(1024, ge=16, le=131072)
    """Fold: longest folded prompt (question + summaries); longer ends the chain 'unfinished'."""
    max_summary_tokens: int = Field(128, ge=1, le=16384)
    """Fold: longest step summary; longer ends the chain 'malformed'."""
    max_model_len: int = Field(2048, ge=64, le=131072)
    """Engine context length (prompt + response); must cover both modes' longest sequence."""
    kv_cache_gib: int = Field(1, ge=1, le=1024)
    """KV-cache memory of one engine in GiB (CPU: VLLM_CPU_KVCACHE_SPACE; GPU: vLLM's
    `kv_cache_memory_bytes`, so the memory plan holds whatever else shares the GPU)."""
    kv_cache_tokens: int | None = Field(None, ge=16)
    """Fixes the KV cache to this many tokens that requests can use (rounded up to whole blocks; the block vLLM
    holds back comes on top) instead of sizing it from memory."""
    max_num_seqs: int = Field(256, ge=1, le=4096)
    """Engine: most sequences decoded in one batch."""
    max_concurrent: int = Field(256, ge=1, le=65536)
    """Trajectories in flight at once per generator; the rest wait (bounds memory of records)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Engine weights and activations. `auto`: bfloat16 where the hardware multiplies it natively (GPUs,
    CPUs with AVX512-BF16 or AMX), else float32 (`models.precision`; not vLLM's `auto`, which copies
    the checkpoint's dtype). The truncated importance weight (`learner.tis_cap`) absorbs the logprob
    mismatch bf16 sampling brings."""
    enforce_eager: bool = True
    """Skip graph compilation: an engine's first start is ~8 s shorter on CPU, but the tiny model generates
    ~1.3x slower (the shipped configs compile)."""
    on_update: Literal["recompute", "keep"] = "recompute"
    """What a weight update does to running generations (neither waits for them): `recompute` aborts
    them and resubmits each with its partial output, re-prefilled under the new weights (AReaL);
    `keep` freezes them with their KV cache and lets them go on under the new weights (PipelineRL),
    which costs nothing where re-prefilling every running sequence is slow (CPU: ~0.7 s per update
    for 96 sequences of the tiny model)."""
    cpu_ids: list[int] | None = None
    """CPU only: pin the engine (its scheduler and model worker) to these cores. vLLM-CPU's scheduler
    busy-polls its worker and takes a whole core of its own while generating; pinned, it shares the
    worker's cores and leaves the others to the learners (e.g. [1] on a 2-core machine). None: unpinned."""

    @model_validator(mode="after")
    def _lengths_fit(self) -> GeneratorConfig:
        if self.max_prompt_tokens + self.segment_tokens > self.max_model_len:
            raise ValueError(f"max_prompt_tokens {self.max_prompt_tokens} + segment_tokens {self.segment_tokens} "
                             f"exceeds max_model_len {self.max_model_len}")
        return self


class OptimConfig(Section):
    """AdamW and its learning-rate schedule (torch AdamW: DeepSpeed's CPU Adam compiles for ~100 s)."""

    lr: float = Field(1e-6, gt=0.0, le=1.0)
    """Peak learning rate (Accordion RL: 1e-6)."""
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW (beta1, beta2)."""
    warmup_steps: int = Field(0, ge=0)
    """Optimizer steps of linear warm-up from 0 to `lr`."""
    decay_steps: int = Field(0, ge=0)
    """Cosine decay from `lr` to `min_lr_ratio * lr` over this many steps after warm-up; 0: constant."""
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    grad_clip: float = Field(1.0, ge=0.0)
    """Clip the global gradient norm to this; 0: no clipping."""

    @model_validator(mode="after")
    def _betas_in_range(self) -> OptimConfig:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas {self.betas}: each must be in [0, 1)")
        return self


class LearnerConfig(Section):
    """The DeepSpeed learner group: precision, sharding, micro-batching and the RL loss."""

    zero_stage: Literal[0, 2, 3] = 2
    """ZeRO-2 shards optimizer state and gradients; ZeRO-3 also the weights; 0 shards nothing (one rank,
    or a model every rank holds whole: ZeRO-2's bookkeeping cost the 0.9 M-parameter tiny model ~20 %
    of its step on CPU)."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """Compute dtype; bf16 keeps fp32 master weights in the optimizer. `auto`: bf16 where the hardware
    multiplies it natively (GPUs, CPUs with AVX512-BF16 or AMX), else fp32: on a CPU without them
    torch's generic bf16 kernels made the tiny model's SFT step ~10x slower than fp32."""
    offload_optimizer: bool = False
    """Keep optimizer state in host memory (GPU runs; on CPU it is there anyway)."""
    gradient_checkpointing: bool = False
    """Keep only each layer's input for the backward pass and recompute the rest: activation memory of
    one layer instead of all (GPU runs with long sequences; ~30 % more compute)."""
    micro_batch_tokens: int = Field(2048, ge=16)
    """Most padded tokens (samples x longest sample) in one forward/backward; gradients accumulate
    over the micro-batches of a batch, and one `train_step` is one optimizer step. Samples are grouped
    by length, so smaller micro-batches waste less on padding (tiny model, CPU: 2048 ran an SFT step
    1.46x faster than 8192, 84 % of the padded tokens real instead of 61 %)."""
    max_length: int = Field(2048, ge=2)
    """Longest sample (prompt + response) the learner accepts."""
    on_too_long: Literal["error", "skip"] = "error"
    """A sample longer than `max_length`: refuse the batch, or leave the sample out (counted in metrics)."""
    on_nonfinite: Literal["error", "skip"] = "error"
    """A non-finite loss: raise after a no-op step, or leave that micro-batch out of the update
    (counted in metrics). Never applied to the weights either way."""
    loss_aggregation: Literal["token_mean", "sequence_mean"] = "token_mean"
    """How per-token losses are averaged over the batch (Accordion and DAPO: token_mean)."""
    clip_low: float = Field(0.2, ge=0.0, le=1.0)
    """PPO ratio clip below 1."""
    clip_high: float = Field(0.28, ge=0.0, le=10.0)
    """PPO ratio clip above 1 (clip-higher)."""
    kl_coef: float = Field(0.0, ge=0.0)
    """Weight of the per-token KL to the reference model, the learner's starting weights (the SFT
    checkpoint; still those after `--resume`); > 0 keeps a frozen copy of them on every learner rank."""
    tis_cap: float | None = Field(2.0, gt=0.0)
    """Truncated importance sampling cap on pi_learner / pi_rollout, applied where `rollout_logprobs`
    are given; null disables the correction."""
    choice_weight: float = Field(1.0, ge=0.0)
    """Loss weight of the budget-choice token of a `<COMP_AUTO>` rollout (1: a token like any other, one
    among the thousands of its batch under `token_mean`)."""
    ppo_epochs: int = Field(1, ge=1, le=16)
    """RL: passes over each batch, one optimizer step each (Accordion: 2). The first is on-policy; later ones
    see the ratio to the weights before the first, clipped at `clip_low`/`clip_high`. The lr schedule counts
    batches, so one batch's passes share its lr. SFT takes one pass."""
    optim: OptimConfig = OptimConfig()
    seed: int = 0


class SFTConfig(Section):
    """Supervised cold start on step traces (`accordion sft`): the built-in task's gold levels, or `data`."""

    steps: int = Field(600, ge=1)
    """Optimizer steps."""
    traces_per_step: int = Field(24, ge=1)
    """Gold traces per optimizer step (a Fold trace gives one sample per segment)."""
    fold_fraction: float = Field(0.2, ge=0.0, le=1.0)
    """Fraction of traces trained as per-segment Fold samples (prompt = folded context) instead of
    one whole Unfold sample; both are needed for both modes to work."""
    budgets: tuple[int, ...] = ()
    """Mixed-ratio SFT: each trace gets a budget drawn from these (20..100), compressed to that ratio
    and tagged with its budget token; a budget listed twice is drawn twice as often. Empty: plain traces
    without budget tokens."""
    policy_fraction: float = Field(0.0, ge=0.0, le=1.0)
    """With `budgets`: fraction of traces in policy mode, whose prompt ends with `<COMP_AUTO>` and whose
    response starts with the drawn budget token, so `<COMP_AUTO>` has choices for RL to weigh."""
    data: str = ""
    """A step-trace file (`accordion compress apply` writes one: `tasks.dataset.TraceRecord` lines) to train
    on instead of the built-in task's gold levels; `budgets`, when set, picks which of its budgets are used,
    and its last `eval_traces` records are held out for the eval loss."""
    eval_every: int = Field(100, ge=1)
    """Steps between held-out loss evaluations."""
    eval_traces: int = Field(64, ge=1)
    """Held-out traces for the eval loss."""
    save_every: int = Field(200, ge=1)
    """Steps between checkpoints (one is always written at the end)."""
    optim: OptimConfig = OptimConfig(lr=3e-3, warmup_steps=30, decay_steps=570, betas=(0.9, 0.95))
    """Replaces `learner.optim` for SFT: a small model learns from scratch at a high rate."""

    _budgets = field_validator("budgets")(lambda values: known_budgets(values, auto=False))

    @model_validator(mode="after")
    def _policy_needs_budgets(self) -> SFTConfig:
        if self.policy_fraction and not (self.budgets or self.data):
            raise ValueError(f"policy_fraction {self.policy_fraction} needs budgets to choose from")
        return self


class CompressConfig(Section):
    """The Extra-CoT compressor (`accordion compress`): a small BERT-style token classifier, built and
    trained locally, that scores each reasoning piece of a trace for keeping; top-k by score compresses."""

    hidden_size: int = Field(128, ge=16)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    max_length: int = Field(512, ge=32)
    """Positions per window: question (at most a quarter) plus a stretch of the trace; longer traces are
    scored window by window."""
    train_traces: int = Field(3000, ge=1)
    """Built-in training traces (`--data builtin`); a labels file is used whole."""
    eval_traces: int = Field(200, ge=1)
    """Held-out traces for the F1 reported during training and by `compress bench`."""
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-3, gt=0)
    save_every: int = Field(200, ge=1)
    """Optimizer steps between checkpoints (one is always written at the end)."""
    band: float = Field(0.05, gt=0, lt=1)
    """`compress apply` keeps a compressed trace only when its measured ratio is this close to the target."""
    seed: int = 0

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> CompressConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        return self


class RewardConfig(Section):
    """Reward workers: answer checking under a hard timeout, and the reward formula (`rewards/`).
    The CHRPO coefficients are the symbols of the formula in `rewards/chrpo.py`."""

    name: Literal["accordion", "chrpo"] = "accordion"
    """`accordion`: 1 for a correct answer in a well-formed, finished trace, else 0. `chrpo`: the
    budget reward (needs `budget` and `ref_len` on every item)."""
    processes: int = Field(2, ge=1, le=256)
    """Verifier processes per reward worker; each check runs in one of them."""
    timeout_s: float = Field(2.0, gt=0.0, le=600.0)
    """Hard wall-clock limit of one answer check; a check that overruns is killed and scored wrong."""
    memory_mb: int = Field(2048, ge=512)
    """Address-space limit of a verifier process: a huge number fails fast instead of exhausting memory."""
    max_answer_chars: int = Field(1000, ge=1, le=100_000)
    """Extracted answers longer than this are scored wrong without parsing."""
    number_fallback: bool = False
    """Without `\\boxed{}` or `#### N`, take the last plain number of the answer as the prediction."""
    correct: float = Field(1.0, gt=0.0)
    """R_correct: reward of a correct answer before shaping."""
    calib_weight: float = Field(0.2, ge=0.0)
    """w_cal: calibration bonus at a perfect |r̂ - chosen| = 0 (0 at the band edge)."""
    calib_band: float = Field(0.1, gt=0.0, le=1.0)
    """b: calibration term is non-negative while |r̂ - chosen| <= b (the Huber knee)."""
    calib_floor: float = Field(0.4, ge=0.0)
    """Most the calibration term can take away (must stay below `correct`)."""
    compress_weight: float = Field(0.5, ge=0.0)
    """w_comp: bonus per unit of compression 1 - r̂ for correct answers."""
    compress_cap: float = Field(0.6, ge=0.0, le=1.0)
    """κ: compression beyond this earns nothing more (stops a race to the shortest budget)."""
    under_penalty: float = Field(0.5, ge=0.0)
    """λ_under: cost of a wrong answer after choosing the shortest budget (ratio 0)."""
    over_penalty: float = Field(0.1, ge=0.0)
    """λ_over: cost of a wrong answer after choosing the full budget (ratio 1); below λ_under."""
    format_penalty: float = Field(1.0, ge=0.0)
    """P_format: cost of an unfinished or malformed trajectory; above λ_under."""

    @model_validator(mode="after")
    def _orderings(self) -> RewardConfig:
        """CHRPO's orderings (`rewards/chrpo.py`) hold for every input only with coefficients like these."""
        if self.calib_floor >= self.correct:
            raise ValueError(f"calib_floor {self.calib_floor} must be below correct {self.correct}: "
                             "a correct answer must always beat a wrong one")
        if self.over_penalty >= self.under_penalty:
            raise ValueError(f"need over_penalty ({self.over_penalty}) < under_penalty ({self.under_penalty})")
        if self.format_penalty <= self.under_penalty:
            raise ValueError(f"format_penalty {self.format_penalty} must exceed under_penalty "
                             f"{self.under_penalty}: unfinished or malformed must score lowest")
        return self


class RLConfig(Section):
    """The RL loop (`accordion train`): what one step trains on and how far generation runs ahead."""

    steps: int = Field(20, ge=1)
    """Optimizer steps (policy versions) to train."""
    prompts_per_step: int = Field(8, ge=1)
    """Groups (questions) per optimizer step."""
    samples_per_prompt: int = Field(4, ge=2)
    """Trajectories per question: the group its advantage is computed in."""
    mode: Literal["fold", "unfold", "mix"] = "fold"
    """Rollout mode: Fold-RL, Unfold-RL, or Mix-RL (Unfold and Fold steps, in the share `fold_share`)."""
    fold_share: float = Field(0.5, gt=0, lt=1)
    """Mix-RL: the share of steps rolled out in Fold mode, spread evenly (0.5: by turns, Unfold first).
    Only Fold rollouts punish a summary that drops what the next step needs: Unfold answers right without it."""
    budgets: tuple[Budget, ...] = ()
    """Budget tokens of the rollouts, cycled over groups (data position i gets `budgets[i % n]`): ratios
    20..100 and `auto` (policy mode: the model picks its ratio, CHRPO rewards the pick). Empty: none.
    `[auto, 100]` trains the budget choice and full-length reasoning side by side."""
    skip_uniform_groups: bool = True
    """DAPO's dynamic sampling: a group whose rewards are all equal has zero advantage and would only
    dilute the token-mean loss; it is set aside (its prompt counts as used) and another group takes its
    place, at most `prompts_per_step` such replacements per step."""
    mask_truncated: bool = True
    """Overlong filtering (DAPO): a trajectory cut off by a length limit is left out of the loss rather
    than trained as a failure (its reward still counts in its group's mean)."""
    max_staleness: int = Field(1, ge=0)
    """Policy versions a trained group may lag behind the learner; 0 is synchronous on-policy RL."""
    _budgets = field_validator("budgets")(known_budgets)
    scale_advantage_by_std: bool = False
    """Divide group advantages by the group's reward std (GRPO); Accordion-RL does not."""
    sync_every: int = Field(1, ge=1)
    """Optimizer steps between weight syncs to the generators."""
    sync_backend: Literal["objstore", "gloo", "nccl", "ipc"] = "objstore"
    """How weights reach the generators (`models.sync`): the Ray object store (one put, every generator
    reads it), a gloo broadcast group (CPU), the same over NCCL, or CUDA IPC handles to generators on the
    learner's GPU. nccl and ipc need CUDA GPUs: a job without them stops at start."""
    bucket_mb: int = Field(64, ge=1)
    """Weight-sync bucket size in MiB."""
    save_every: int = Field(10, ge=1)
    """Steps between checkpoints (one is always written at the end)."""
    samples_to_log: int = Field(4, ge=0)
    """Trajectories per step written to the MLflow artifact `samples/step_N.jsonl`."""
    seed: int = 0

    @model_validator(mode="after")
    def _staleness_covers_sync(self) -> RLConfig:
        if self.max_staleness < self.sync_every - 1:
            raise ValueError(f"sync_every {self.sync_every} makes rollouts up to {self.sync_every - 1} versions "
                             f"stale, more than max_staleness {self.max_staleness} allows")
        return self


class EvalConfig(Section):
    """Held-out evaluation, one protocol for SFT, the RL loop and `accordion eval`: `samples` trajectories
    per question at `temperature`, accuracy = mean over them (Accordion's protocol: 8 at 1.0), plus one
    greedy trajectory per question beside it. Greedy alone hides what the policy does: it once showed
    Fold 98 % while sampled Fold rollouts were right 26 % of the time."""

    temperature: float = Field(1.0, gt=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    greedy: bool = True
    """Also decode each question greedily (reported as `*_greedy`)."""
    budget: Budget | None = None
    """Budget token of the Fold/Unfold evaluations (`100` for a model trained with budgets). None: none."""
    questions: int = Field(200, ge=1)
    """Held-out questions of the SFT and final evaluations (at most `task.eval_size`)."""
    samples: int = Field(8, ge=1)
    every: int = Field(10, ge=0)
    """RL steps between periodic evaluations (0: none before the final one)."""
    periodic_questions: int = Field(64, ge=1)
    periodic_samples: int = Field(4, ge=1)
    budgets: tuple[Budget, ...] = ()
    """Final sweep over budget tokens in Fold mode (accuracy, reasoning tokens, measured ratio r-hat
    against the same model's `<COMP_100>` length, which is evaluated too). Empty: no sweep."""
    budget_questions: int = Field(64, ge=1)
    budget_samples: int = Field(4, ge=1)
    harder_steps: tuple[int, int] | None = None
    """Final evaluation on built-in problems with this many operations (e.g. [6, 8] after training on
    2-4), both modes: does folding let reasoning run longer than it was trained for?"""
    harder_questions: int = Field(64, ge=1)
    harder_samples: int = Field(4, ge=1)

    _budgets = field_validator("budget", "budgets")(known_budgets)

    @model_validator(mode="after")
    def _harder_steps_in_range(self) -> EvalConfig:
        if self.harder_steps and not 1 <= self.harder_steps[0] <= self.harder_steps[1] <= 12:
            raise ValueError(f"harder_steps {list(self.harder_steps)}: need 1 <= low <= high <= 12")
        return self


class PlanConfig(Section):
    """What the memory plan (`accordion plan`) assumes that no other setting fixes."""

    question_tokens: int = Field(512, ge=1)
    """Typical question (prompt before any reasoning), in tokens."""
    summary_tokens: int = Field(256, ge=1)
    """Typical Fold step summary, in tokens (Accordion's cold start asks for >= 100; the hard limit is
    `generator.max_summary_tokens`)."""
    reserve_gib: float = Field(2.0, ge=0.0)
    """GPU memory per process beyond the planned tensors: CUDA context, allocator fragmentation,
    communication buffers, vLLM's sampler and profiling peak."""


class Config(Section):
    """The whole job. Sections are added per role; each role reads only its own."""

    run_dir: str = "runs/local"
    """Where checkpoints, metrics and the MLflow store of this job go."""
    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()
    generator: GeneratorConfig = GeneratorConfig()
    cluster: ClusterConfig = ClusterConfig()
    tracking: TrackingConfig = TrackingConfig()
    learner: LearnerConfig = LearnerConfig()
    sft: SFTConfig = SFTConfig()
    compress: CompressConfig = CompressConfig()
    reward: RewardConfig = RewardConfig()
    rl: RLConfig = RLConfig()
    eval: EvalConfig = EvalConfig()
    plan: PlanConfig = PlanConfig()

    @model_validator(mode="after")
    def _reward_has_its_inputs(self) -> Config:
        if self.reward.name == "chrpo" and not self.rl.budgets:
            raise ValueError("reward.name chrpo rewards budgets: set rl.budgets (e.g. [auto, 100])")
        if self.cluster.colocate and self.rl.max_staleness:
            raise ValueError("cluster.colocate takes turns, generating then training, so nothing is generated "
                             f"ahead: set rl.max_staleness 0 (it is {self.rl.max_staleness})")
        return self
