"""Build the embedded default model: the built-in tokenizer plus a randomly initialised Qwen3 decoder.

Qwen3 rather than Qwen2: transformers 5 forces its own byte-level tokenizer class onto `qwen2`
folders, overriding ours, while it trusts the saved tokenizer class for `qwen3`."""
from __future__ import annotations

import random
from pathlib import Path

from configs.schema import ModelConfig
from models.tokenizer import ASSISTANT, USER, train_tokenizer
from tasks.arithmetic import gold_trace, lax_steps, make_problem
from tasks.format import BUDGETS, budget_prompt

CORPUS_PROBLEMS = 300


def tokenizer_corpus(seed: int = 0) -> list[str]:
    """Chat-rendered built-in samples at every length, budget and summary style, so the vocabulary
    covers all the text the task can produce (including the prompt/response boundary)."""
    rng = random.Random(seed)
    texts = []
    for i in range(CORPUS_PROBLEMS):
        problem = make_problem(rng, 1 + i % 12, 9 if i % 2 else 99)
        lax = lax_steps(problem, 0.5, seed)
        for budget in (None, *BUDGETS):
            ratio = budget or 100
            texts.append(f"{USER}{budget_prompt(problem.question, budget)}{ASSISTANT}{gold_trace(problem, lax, ratio, budget)}")
    return texts


def architecture_config(cfg: ModelConfig, architecture: str, vocab_size: int, **token_ids: int):
    """The transformers config of a decoder with the dimensions of `cfg`: the tiny model's, or a real
    model's when the memory plan runs before its folder exists."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    kind = {"qwen3": Qwen3Config, "qwen2": Qwen2Config, "llama": LlamaConfig}[architecture]
    return kind(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim or cfg.hidden_size // cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        torch_dtype="float32",
        **token_ids,
    )


def tiny_tokenizer(cfg: ModelConfig):
    return train_tokenizer(tokenizer_corpus(cfg.seed))


def build_tiny_model(cfg: ModelConfig, out: str | Path) -> Path:
    """Write tokenizer and model to `out` with `save_pretrained`; transformers and vLLM load it as is."""
    import torch
    from transformers import Qwen3ForCausalLM

    out = Path(out)
    tokenizer = tiny_tokenizer(cfg)
    config = architecture_config(cfg, "qwen3", len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(cfg.seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def resolve_model(cfg: ModelConfig, run_dir: str | Path) -> Path:
    """The model folder to use: `cfg.path`, or the tiny model built once into `run_dir/init_model`."""
    if cfg.path:
        path = Path(cfg.path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model.path {path}: no config.json there (expected a Hugging Face model folder)")
        return path
    path = Path(run_dir) / "init_model"
    if not (path / "config.json").is_file():
        build_tiny_model(cfg, path)
    return path
