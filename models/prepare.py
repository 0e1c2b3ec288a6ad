"""Make a Hugging Face Qwen2.5 / Qwen3 / Llama folder trainable here (`accordion prepare-model`).

Why each change:

- **Format tokens.** The generator stops a Fold segment on the id of `</step>`, and the learner, CHRPO and
  the parsers read `<think>`, `<step>`, budgets as whole tags; a real BPE splits `<step>` into `<`, `st`,
  `ep`, `>`. Each tag becomes one added token that is *not* special, so `decode(skip_special_tokens=True)`
  (what the generator decodes with) keeps it. Like the built-in tokenizer's, each swallows the whitespace
  before it (`lstrip`): ` reasoning <step> summary` costs no lone-space token before the tag, so response
  lengths count reasoning and tags only, and the decoded `reasoning<step> summary</step>` still parses
  (`tasks.format` strips around tags). Qwen3's own `<think>` / `</think>` are set the same way.
- **Embeddings.** New rows start at the exact mean of the rows of the tokenizer's tokens: a new token's
  logit starts at the average logit, so no new tag dominates sampling before SFT, and as input it looks
  like an average token (Hewitt, "Initializing new word embeddings", 2021). Rows past the tokenizer in a
  padded matrix (Qwen: 151,936 rows, 151,665 tokens) were never trained and are left out of the mean.
- **Chat template.** `tasks.format.prompt_ids` renders `[{"role": "user", "content": question + budget}]`
  with the generation prompt and appends the response prefix (`<think>`, a folded context); the template
  renders exactly that, with the base model's own turn markers when its template uses ChatML (Qwen) or
  Llama 3 headers, plain text otherwise. It drops Qwen2.5's default system message and Qwen3's think
  block: Fold re-sends the prompt with every segment, and the project writes `<think>` itself.
- **Untied output (`--untie-embeddings`, optional).** Qwen2.5 up to 3B and Qwen3 up to 4B tie their LM head to
  their input embeddings. In policy mode a weighted budget choice (`learner.choice_weight` > 1) pushes down the
  logits of the budgets not taken, and tied, that moves those budget tokens' input rows too, which changes every
  prompt that asks for them: on the built-in model, weight 10 tied sank `<COMP_80>` from 96 to 28 %; untied it
  kept 94 %. Untying gives the LM head its own copy of the embeddings (the same logits until training moves
  them), at the cost of one more vocabulary-sized matrix.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tasks.format import BUDGET_TOKENS, FORMAT_TOKENS, budget_prompt, parse_trace, render_trace

ARCHITECTURES = ("Qwen2ForCausalLM", "Qwen3ForCausalLM", "LlamaForCausalLM")
# style -> (tokens its template must use, a turn's opening, a user turn's closing, the generation prompt)
TURN_STYLES = {
    "chatml": (("<|im_start|>", "<|im_end|>"), "<|im_start|>{{ message['role'] }}\n", "<|im_end|>\n",
               "<|im_start|>assistant\n"),
    "llama3": (("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
               "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n", "<|eot_id|>",
               "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "plain": ((), "", "\n", ""),
}


class PrepareError(ValueError):
    """A base folder that cannot be prepared, or a result that fails its checks; the message names the folder."""


@dataclass(frozen=True)
class Prepared:
    out: Path
    architecture: str
    added: list[str]
    """Format tokens that were not in the base tokenizer (the rest existed and only had `lstrip` set)."""
    tokens_before: int
    rows_before: int
    rows_after: int
    tied: bool
    """The prepared model's LM head is its input embeddings."""
    untied: bool
    """It was tied and was given its own copy here (`untie`)."""
    style: str


def chat_style(template: str | None, vocab: dict[str, int]) -> str:
    """The turn markers to keep: those the base template uses, if the tokenizer has them as tokens."""
    for style, (markers, *_) in TURN_STYLES.items():
        if markers and template and all(m in template and m in vocab for m in markers):
            return style
    return "plain"


def chat_template(style: str) -> str:
    """A template rendering every message as a turn; an assistant turn ends with the EOS token because SFT
    ends each response with `eos_token_id` and generation stops on it."""
    _, opening, closing, generation = TURN_STYLES[style]
    return ("{{ bos_token or '' }}{% for message in messages %}" + opening + "{{ message['content'] }}"
            "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}" + closing + "{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}" + generation + "{% endif %}")


def read_architecture(folder: Path) -> str:
    config = folder / "config.json"
    if not folder.is_dir():
        raise PrepareError(f"{folder}: no such folder")
    if not config.is_file():
        raise PrepareError(f"{folder}: no config.json (expected a Hugging Face model folder)")
    try:
        architectures = json.loads(config.read_text()).get("architectures") or []
    except json.JSONDecodeError as err:
        raise PrepareError(f"{config}: not valid JSON ({err})") from None
    supported = [a for a in architectures if a in ARCHITECTURES]
    if not supported:
        raise PrepareError(f"{folder}: unsupported architecture {architectures or 'none'} in config.json "
                           f"(supported: {', '.join(ARCHITECTURES)})")
    return supported[0]


def register_format_tokens(tokenizer) -> list[str]:
    """Add every format token (or reset an existing one) as a non-special, whitespace-swallowing token;
    returns those that were new."""
    from tokenizers import AddedToken

    new = [t for t in FORMAT_TOKENS if t not in tokenizer.get_vocab()]
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False, lstrip=True) for t in FORMAT_TOKENS])
    return new


def init_new_rows(model, new_ids: list[int], trained_rows: int) -> None:
    """Grow the embeddings to hold `new_ids` and set those rows, input and untied output, to the mean of
    the first `trained_rows` rows."""
    import torch

    if not new_ids:
        return
    if max(new_ids) >= model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(max(new_ids) + 1, mean_resizing=False)
    matrices = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not matrices[0]:
        matrices.append(output.weight)
    with torch.no_grad():
        for weight in matrices:
            weight[new_ids] = weight[:trained_rows].float().mean(0).to(weight.dtype)


def untie_embeddings(model) -> bool:
    """Give a tied LM head its own copy of the input embeddings; returns whether it was tied."""
    import torch

    output, embeddings = model.get_output_embeddings(), model.get_input_embeddings().weight
    if output is None or output.weight is not embeddings:
        return False
    output.weight = torch.nn.Parameter(embeddings.detach().clone())
    model.config.tie_word_embeddings = False  # else loading ties the two again, dropping the copy
    return True


def untied_copy(folder: str | Path, out: str | Path) -> Path:
    """Write `folder`'s model with an LM head of its own (and its tokenizer) to `out`, atomically: a folder
    that exists is complete."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    partial = out.with_name(out.name + ".tmp")
    shutil.rmtree(partial, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
    untie_embeddings(model)
    model.save_pretrained(partial)
    AutoTokenizer.from_pretrained(folder).save_pretrained(partial)
    partial.rename(out)
    return out


def ties_embeddings(folder: str | Path) -> bool:
    """Whether the model folder's config ties its LM head to its input embeddings."""
    return bool(json.loads((Path(folder) / "config.json").read_text()).get("tie_word_embeddings", False))


def check_tokenizer(tokenizer, folder: Path) -> None:
    """Each format token is one id that decodes back to itself, and a step trace survives encode + decode
    + `parse_trace`, as the generator will see it; PrepareError naming the folder and token otherwise."""
    for token in FORMAT_TOKENS:
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            pieces = " ".join(tokenizer.convert_ids_to_tokens(ids))
            raise PrepareError(f"{folder}: format token {token} encodes to {len(ids)} ids ({pieces}), not one")
        if tokenizer.decode(ids, skip_special_tokens=True) != token:
            raise PrepareError(f"{folder}: format token {token} decodes to "
                               f"{tokenizer.decode(ids, skip_special_tokens=True)!r} (special, or normalized)")
    steps, answer = [("Sam has 3 + 4 = 7 apples.", "Sam has 7 apples")], "the answer is \\boxed{7}"
    trace = render_trace(steps, answer, budget=40)
    decoded = tokenizer.decode(tokenizer.encode(trace, add_special_tokens=False), skip_special_tokens=True)
    if parse_trace(decoded) != (steps, answer):
        raise PrepareError(f"{folder}: a step trace does not survive encoding and decoding: {trace!r} -> {decoded!r}")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": budget_prompt("Sam has 3 apples.", 40)}],
                                           add_generation_prompt=True, return_dict=False)
    if tokenizer.convert_tokens_to_ids(BUDGET_TOKENS[40]) not in prompt:
        raise PrepareError(f"{folder}: the chat template drops the budget token from the prompt")


def prepare_model(base: str | Path, out: str | Path, untie: bool = False) -> Prepared:
    """Write `base` with the format tokens, grown embeddings (and, with `untie`, an LM head of its own) and
    the project's chat template to `out` (which must not exist or be empty), then load `out` again and check
    its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, out = Path(base), Path(out)
    architecture = read_architecture(base)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PrepareError(f"{out}: already exists and is not an empty folder (the output must be a new folder)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
    except (OSError, ValueError) as err:
        raise PrepareError(f"{base}: cannot load its tokenizer ({err})") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    except (OSError, ValueError) as err:
        raise PrepareError(f"{base}: cannot load its weights ({err})") from None
    tokens_before, rows_before = len(tokenizer), model.get_input_embeddings().weight.shape[0]
    if tokens_before > rows_before:
        raise PrepareError(f"{base}: the tokenizer has {tokens_before} tokens but the model only {rows_before} "
                           "embedding rows (tokenizer and weights of different models?)")
    style = chat_style(tokenizer.chat_template, tokenizer.get_vocab())
    added = register_format_tokens(tokenizer)
    init_new_rows(model, tokenizer.convert_tokens_to_ids(added), tokens_before)
    untied = untie and untie_embeddings(model)
    tokenizer.chat_template = chat_template(style)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)

    check_tokenizer(AutoTokenizer.from_pretrained(out), out)
    tied = model.get_output_embeddings() is None or \
        model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return Prepared(out, architecture, added, tokens_before, rows_before,
                    model.get_input_embeddings().weight.shape[0], tied, untied, style)
