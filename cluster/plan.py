"""The memory plan: what each device of each role holds, whether it fits, and how many trajectories the
KV cache serves at once in Fold and in Unfold (the concurrency the paper's 3x throughput comes from).

`accordion plan` prints it; `accordion train` refuses a GPU run whose plan does not fit before any actor
starts, because the alternative is an OOM minutes later, in a worker, after the engines have loaded.

Where the figures come from:
- the architecture: the model folder's `config.json`, else the `model` section's dimensions (so a run is
  planned before its checkpoint is downloaded); parameters are counted on a meta-device model, exactly;
- learner model states: DeepSpeed's own estimators for the configured ZeRO stage and optimizer offload
  (ZeRO-0 shards nothing: the ZeRO-2 figure for one GPU);
- learner activations: an estimate per token and layer of what a Llama/Qwen block saves for backward
  (SDPA attention, so nothing quadratic in length), or only the layer inputs with gradient checkpointing,
  plus the response logits the loss holds in fp32;
- generator: weights in the engine dtype, and the KV cache the engine is given (`generator.kv_cache_gib`),
  counted in whole blocks as vLLM allocates them (128 tokens a block on CPU, 16 on GPU).
"""
from __future__ import annotations

import math
from pathlib import Path
from pydantic import BaseModel

from configs import ConfigError
from configs.schema import Config

GIB = 1 << 30
CPU_BLOCK_TOKENS, GPU_BLOCK_TOKENS = 128, 16
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


class Architecture(BaseModel):
    source: str
    """Where the dimensions came from."""
    params: int
    largest_layer_params: int
    vocab_size: int
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int


class Item(BaseModel):
    what: str
    gib: float


class Device(BaseModel):
    name: str
    """e.g. `GPU (learner rank + generator, x1)`."""
    count: int
    capacity_gib: float
    items: list[Item]
    total_gib: float
    fits: bool


class Mode(BaseModel):
    peak_tokens: int
    """KV tokens one trajectory holds at its largest."""
    mean_tokens: int
    """KV tokens one trajectory holds on average over its generated tokens (what steady-state
    concurrency under continuous batching follows)."""
    concurrent: int
    """Trajectories the KV cache holds at once at `mean_tokens` (at most `generator.max_num_seqs`)."""
    concurrent_at_peak: int
    """... if every one were at `peak_tokens` (the worst case)."""


class Plan(BaseModel):
    fits: bool
    fold_unfold_concurrency_ratio: float
    architecture: Architecture
    precision: str
    devices: list[Device]
    host_gib: float
    """Host memory the learners' offloaded states take (per node)."""
    kv_bytes_per_token: int
    kv_block_tokens: int
    kv_tokens: int
    """Tokens of KV cache in one engine."""
    fold: Mode
    unfold: Mode
    notes: list[str]


def architecture(cfg: Config) -> Architecture:
    """The model's dimensions and exact parameter counts (a meta-device model: nothing is allocated)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(cfg.model.path) if cfg.model.path else Path(cfg.run_dir) / "init_model"
    if (folder / "config.json").is_file():
        config, source = AutoConfig.from_pretrained(folder), f"{folder / 'config.json'}"
    else:
        from models.build import architecture_config, tiny_tokenizer

        vocab = cfg.model.vocab_size or (0 if cfg.model.path else len(tiny_tokenizer(cfg.model)))
        if not vocab:
            raise ConfigError(f"model.path {cfg.model.path}: no config.json there yet; to plan before it exists "
                             f"set model.vocab_size and the other model dimensions")
        arch = "qwen3" if not cfg.model.path else cfg.model.architecture
        config, source = architecture_config(cfg.model, arch, vocab), f"model section ({arch})"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    largest = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)
    text = config.get_text_config()
    heads = text.num_attention_heads
    return Architecture(
        source=source, params=sum(p.numel() for p in model.parameters()), largest_layer_params=largest,
        vocab_size=text.vocab_size, layers=text.num_hidden_layers, hidden=text.hidden_size, heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads, intermediate=text.intermediate_size)


def model_states(cfg: Config, arch: Architecture) -> tuple[float, float]:
    """(per-rank device bytes, host bytes per node) of weights, gradients and optimizer: DeepSpeed's figures."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    learner = cfg.learner
    ranks = cfg.cluster.learners if learner.zero_stage else 1
    if learner.zero_stage == 3:
        host, device, _ = estimate_zero3_model_states_mem_needs(
            arch.params, arch.largest_layer_params, num_gpus_per_node=ranks, cpu_offload=learner.offload_optimizer,
            cpu_offload_params=False, zero_init=False)
    else:
        host, device = estimate_zero2_model_states_mem_needs(arch.params, num_gpus_per_node=ranks,
                                                             cpu_offload=learner.offload_optimizer)
    return device, host


def activation_bytes(cfg: Config, arch: Architecture, element: int) -> tuple[float, float]:
    """(layer activations, logits) of the largest micro-batch: `learner.micro_batch_tokens` padded tokens,
    or one sample of `learner.max_length` (a longer sample gets a micro-batch of its own)."""
    tokens = max(cfg.learner.micro_batch_tokens, cfg.learner.max_length)
    g = cfg.generator
    responses = min(tokens, g.segment_tokens if cfg.rl.mode == "fold" else max(g.segment_tokens, g.max_tokens))
    h, i = arch.hidden, arch.intermediate
    q, kv = arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim
    # Saved per token by one block: norm inputs and outputs (4h), q, rotated q and attention output (3q),
    # k, v and rotated k plus SDPA's copies (4kv), the MLP's gate, up, activation and product (4i); the
    # RMS norms keep fp32 intermediates (2 x 4h bytes).
    layer = element * (4 * h + 3 * q + 4 * kv + 4 * i) + 8 * h
    per_token = element * h * arch.layers + layer if cfg.learner.gradient_checkpointing else layer * arch.layers
    # Logits of every position in the compute dtype and their gradient; the response positions' fp32
    # copy for the log-softmax and its gradient (responses: a segment in Fold-RL).
    logits = arch.vocab_size * (tokens * 2 * element + responses * 8)
    return tokens * per_token, logits


def modes(cfg: Config, kv_tokens: int, block: int) -> tuple[Mode, Mode]:
    """Fold and Unfold occupancy of one trajectory of `max_segments` full segments: Unfold holds all the
    reasoning so far, Fold the question, the summaries so far and the current segment."""
    g, p = cfg.generator, cfg.plan
    n, seg = g.max_segments, g.segment_tokens
    reasoning = min(g.max_tokens, n * seg)
    unfold_peak, unfold_mean = p.question_tokens + reasoning, p.question_tokens + reasoning / 2
    prompts = [min(p.question_tokens + k * p.summary_tokens, g.max_prompt_tokens) for k in range(n)]
    fold_peak, fold_mean = prompts[-1] + seg, sum(prompts) / n + seg / 2

    def mode(peak: float, mean: float) -> Mode:
        # A sequence holds whole blocks: on average half a block more than its tokens.
        held = mean + block / 2
        return Mode(peak_tokens=math.ceil(peak), mean_tokens=math.ceil(mean),
                    concurrent=min(int(kv_tokens // held), g.max_num_seqs),
                    concurrent_at_peak=min(kv_tokens // (math.ceil(peak / block) * block), g.max_num_seqs))

    return mode(fold_peak, fold_mean), mode(unfold_peak, unfold_mean)


def gpu_capacity_gib(cfg: Config) -> float:
    if cfg.cluster.gpu_memory_gib:
        return cfg.cluster.gpu_memory_gib
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("cluster.gpu_memory_gib is 0 and this machine has no GPU to read it from: "
                         "set cluster.gpu_memory_gib to the memory of one GPU of the cluster")
    return torch.cuda.get_device_properties(0).total_memory / GIB


def host_capacity_gib() -> float:
    import psutil

    return psutil.virtual_memory().total / GIB


def make_plan(cfg: Config) -> Plan:
    from models.precision import engine_dtype, learner_precision

    c, g = cfg.cluster, cfg.generator
    arch = architecture(cfg)
    precision = learner_precision(cfg.learner.precision)
    element = 2 if precision == "bf16" else 4
    engine_bytes = DTYPE_BYTES[engine_dtype(g.dtype)]
    on_gpu = c.learner_gpus > 0 or c.generator_gpus > 0
    block = GPU_BLOCK_TOKENS if c.generator_gpus > 0 else CPU_BLOCK_TOKENS
    kv_per_token = 2 * arch.layers * arch.kv_heads * arch.head_dim * engine_bytes
    kv_tokens = ((g.kv_cache_gib * GIB) // (kv_per_token * block) - 1) * block  # vLLM holds one block back
    fold, unfold = modes(cfg, kv_tokens, block)

    states, host = model_states(cfg, arch)
    activations, logits = activation_bytes(cfg, arch, element)
    zero = f"ZeRO-{cfg.learner.zero_stage}" + (", optimizer offloaded" if cfg.learner.offload_optimizer else "")
    learner = [Item(what=f"learner model states ({zero}, {precision}; DeepSpeed's estimate)", gib=states / GIB),
               Item(what=f"learner activations ({max(cfg.learner.micro_batch_tokens, cfg.learner.max_length)} tokens"
                         f"{', checkpointed' if cfg.learner.gradient_checkpointing else ''}; estimate)",
                    gib=activations / GIB),
               Item(what="learner logits (and the responses' fp32 log-softmax, with gradients)", gib=logits / GIB)]
    generator = [Item(what=f"generator weights ({engine_dtype(g.dtype)})", gib=arch.params * engine_bytes / GIB),
                 Item(what=f"generator KV cache ({kv_tokens:,} tokens)", gib=float(g.kv_cache_gib))]
    notes = []
    if on_gpu:
        capacity = gpu_capacity_gib(cfg)
        learner.append(Item(what="learner process: CUDA context, fragmentation, buffers (plan.reserve_gib)",
                            gib=cfg.plan.reserve_gib))
        generator.append(Item(what="generator process: CUDA context, sampler, profiling peak (plan.reserve_gib)",
                              gib=cfg.plan.reserve_gib))
        if 0 < c.learner_gpus < 1 and 0 < c.generator_gpus < 1:
            count = max(c.learners, c.generators)
            name = f"GPU (learner rank + generator, x{count})"
            if c.colocate:
                # Taking turns: the learner's activations and the generator's weights and KV cache are never
                # resident together (vLLM sleep level 1), so the peak is the resident part plus the larger turn.
                train, generate = learner[1:3], generator[:2]
                turns = max(sum(i.gib for i in train), sum(i.gib for i in generate))
                rest = [i for i in learner + generator if i not in train + generate]
                groups = [(name, count, rest + [Item(what=f"{i.what} [training turn]", gib=i.gib) for i in train]
                           + [Item(what=f"{i.what} [generation turn]", gib=i.gib) for i in generate],
                           sum(i.gib for i in rest) + turns)]
                notes.append("colocated: the generator sleeps while the learner trains, so a GPU holds the resident "
                             "items and the larger of the two turns")
            else:
                groups = [(name, count, learner + generator, None)]
                notes.append("learner and generator share each GPU and are planned resident at once")
        else:
            groups = [(f"GPU (learner rank, x{c.learners})", c.learners, learner, None),
                      (f"GPU (generator, x{c.generators})", c.generators, generator, None)]
    else:
        capacity = host_capacity_gib()
        groups = [("host (CPU: every role)", 1,
                   [Item(what=f"{item.what}, x{c.learners}", gib=item.gib * c.learners) for item in learner]
                   + [Item(what=f"{item.what}, x{c.generators}", gib=item.gib * c.generators) for item in generator],
                   None)]
    devices = []
    for name, count, items, peak in groups:
        total = sum(item.gib for item in items) if peak is None else peak
        devices.append(Device(name=name, count=count, capacity_gib=capacity, items=items, total_gib=total,
                              fits=total <= capacity))
    if unfold.concurrent == g.max_num_seqs or fold.concurrent == g.max_num_seqs:
        notes.append(f"concurrency capped by generator.max_num_seqs {g.max_num_seqs}")
    return Plan(fits=all(d.fits for d in devices), architecture=arch, precision=precision, devices=devices,
                host_gib=host / GIB if on_gpu and cfg.learner.offload_optimizer else 0.0,
                kv_bytes_per_token=kv_per_token, kv_block_tokens=block, kv_tokens=kv_tokens, fold=fold, unfold=unfold,
                fold_unfold_concurrency_ratio=round(fold.concurrent / max(unfold.concurrent, 1), 2), notes=notes)


def render(plan: Plan, cfg: Config) -> str:
    """The plan as the table `accordion plan` prints and a refused `accordion train` shows."""
    a, g, p = plan.architecture, cfg.generator, cfg.plan
    lines = [f"model: {a.params / 1e9:.3f} B parameters, {a.layers} layers, hidden {a.hidden}, "
             f"{a.heads}/{a.kv_heads} heads x {a.head_dim}, vocab {a.vocab_size:,} (from {a.source})"]
    for d in plan.devices:
        lines.append(f"\n{d.name}: {d.total_gib:.2f} of {d.capacity_gib:.2f} GiB  "
                     f"{'fits' if d.fits else 'DOES NOT FIT'}")
        lines += [f"  {item.gib:9.3f} GiB  {item.what}" for item in d.items]
    if plan.host_gib:
        lines.append(f"\nhost: {plan.host_gib:.2f} GiB of offloaded optimizer states per node (DeepSpeed's estimate)")
    lines.append(f"\nKV cache: {plan.kv_tokens:,} tokens per engine ({plan.kv_bytes_per_token:,} bytes a token, "
                 f"blocks of {plan.kv_block_tokens})")
    lines.append(f"  a trajectory of {g.max_segments} x {g.segment_tokens}-token segments, {p.question_tokens}-token "
                 f"question, {p.summary_tokens}-token summaries (plan.*):")
    for name, mode in (("Fold", plan.fold), ("Unfold", plan.unfold)):
        lines.append(f"  {name:<6} peak {mode.peak_tokens:>7,} tokens, mean {mode.mean_tokens:>7,}: "
                     f"{mode.concurrent:>5} at once ({mode.concurrent_at_peak} if all at their peak)")
    lines.append(f"  Fold / Unfold concurrency: {plan.fold_unfold_concurrency_ratio:.2f}x")
    lines += [f"note: {n}" for n in plan.notes]
    lines.append(f"\n{'fits' if plan.fits else 'does NOT fit'} ({plan.precision})")
    return "\n".join(lines)


def check_fits(cfg: Config) -> None:
    """`accordion train`'s refusal, before anything starts: a GPU run whose plan does not fit stops here."""
    if not (cfg.cluster.learner_gpus or cfg.cluster.generator_gpus):
        return  # CPU runs: vLLM's KV cache and the learners take host memory, which the OS pages
    plan = make_plan(cfg)
    if not plan.fits:
        raise ConfigError(f"the memory plan does not fit, so nothing was started:\n{render(plan, cfg)}\n"
                          f"lower generator.kv_cache_gib or learner.micro_batch_tokens / max_length, turn on "
                          f"learner.offload_optimizer or learner.gradient_checkpointing, or use more GPUs")
