"""The built-in tokenizer: word-level, trained with `tokenizers` on the built-in task's text.

Digits are single tokens (as in Qwen and Llama) so that arithmetic is learnable. Each token keeps
its leading space, so decoding is plain concatenation. The format tokens (`<think>`, `<step>`,
budgets) are added tokens that swallow the space before them and survive decoding; the chat and
sequence tokens are special and are skipped when decoding.
"""
from __future__ import annotations

import re
from typing import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from tasks.format import FORMAT_TOKENS, TOKEN_PATTERN

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
USER, ASSISTANT = "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, USER, ASSISTANT)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}" + USER + "{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT + "{{ message['content'] }}{{ eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)


def train_tokenizer(corpus: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary is every pre-token of `corpus`."""
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(TOKEN_PATTERN.pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    # Train on the text between tags, cut exactly as encoding will cut it (format tags take the
    # whitespace before them), then add the tags: the trainer would otherwise learn " <", "step", ">".
    tags = re.compile("|".join([*(rf"\s*{re.escape(t)}" for t in FORMAT_TOKENS), *map(re.escape, SPECIAL_TOKENS)]))
    pieces = (piece for text in corpus for piece in tags.split(text) if piece)
    tok.train_from_iterator(pieces, trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS)))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False, lstrip=True) for t in FORMAT_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        additional_special_tokens=[USER, ASSISTANT],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )

