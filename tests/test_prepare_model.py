"""`accordion prepare-model` on tiny real-like Qwen2.5 / Qwen3 folders (`tests/real_like.py`): format tokens,
embedding rows, chat template, errors; the system test runs the whole command with its vLLM check."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from cli.prepare_model import main
from cluster.train import tied_choice_warning
from configs import load_config
from models.prepare import PrepareError, chat_style, chat_template, check_tokenizer, prepare_model, ties_embeddings
from tasks.format import FORMAT_TOKENS, THINK_OPEN, budget_prompt, prompt_ids
from tests.real_like import build_real_like

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Natalia sold clips to 48 of her friends in April. How many clips did she sell?"


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Qwen2.5-like (tied, padded rows), Qwen3-like (untied, has <think>), and both without padding rows."""
    root = tmp_path_factory.mktemp("bases")
    return {"qwen2": build_real_like(root / "qwen2", "qwen2"),
            "qwen3": build_real_like(root / "qwen3", "qwen3", tie=False),
            "exact-untied": build_real_like(root / "exact-untied", "qwen2", tie=False, extra_rows=0),
            "exact-tied": build_real_like(root / "exact-tied", "qwen3", extra_rows=0)}


@pytest.fixture(scope="module")
def prepared(bases, tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    return {name: prepare_model(base, root / name) for name, base in bases.items()}


def embeddings(folder: Path) -> dict[str, torch.Tensor]:
    weights = load_file(folder / "model.safetensors")
    return {"input": weights["model.embed_tokens.weight"], "output": weights.get("lm_head.weight")}


@pytest.mark.parametrize("name", ["qwen2", "qwen3"])
def test_each_format_token_is_one_id_that_survives_decoding(bases, prepared, name):
    before = AutoTokenizer.from_pretrained(bases[name])
    tok = AutoTokenizer.from_pretrained(prepared[name].out)
    ids = [tok.encode(t, add_special_tokens=False) for t in FORMAT_TOKENS]
    assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == len(FORMAT_TOKENS)
    assert [tok.decode(i, skip_special_tokens=True) for i in ids] == list(FORMAT_TOKENS)
    # Before: a tag is several byte-level pieces (Qwen3 already had <think> and </think>, which keep their ids).
    assert len(before.encode("<step>", add_special_tokens=False)) > 1
    kept = [t for t in FORMAT_TOKENS if t in before.get_vocab()]
    assert kept == (["<think>", "</think>"] if name == "qwen3" else [])
    assert prepared[name].added == [t for t in FORMAT_TOKENS if t not in kept]
    assert all(before.convert_tokens_to_ids(t) == tok.convert_tokens_to_ids(t) for t in kept)
    # Tags take the space before them, as the built-in tokenizer's do: no lone-space token before each.
    step = tok.convert_tokens_to_ids("<step>")
    assert tok.encode(" 24 clips <step>", add_special_tokens=False) == \
        tok.encode(" 24 clips", add_special_tokens=False) + [step]


def test_new_rows_are_the_mean_of_the_tokenizer_rows_in_a_padded_tied_model(bases, prepared):
    p = prepared["qwen2"]
    old, new = embeddings(bases["qwen2"])["input"], embeddings(p.out)["input"]
    ids = AutoTokenizer.from_pretrained(p.out).convert_tokens_to_ids(list(FORMAT_TOKENS))
    # The padding rows already hold every new id: no resize; the untrained padding stays out of the mean.
    assert p.tied and p.rows_after == p.rows_before == new.shape[0] and max(ids) < p.rows_before
    assert torch.allclose(new[ids], old[:p.tokens_before].mean(0).expand(len(ids), -1), atol=1e-6)
    others = torch.ones(len(old), dtype=torch.bool)
    others[ids] = False
    assert torch.equal(new[others], old[others])
    model = AutoModelForCausalLM.from_pretrained(p.out)
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.get_input_embeddings().weight


@pytest.mark.parametrize("name", ["exact-untied", "exact-tied"])
def test_an_unpadded_model_grows_its_matrices_at_the_mean(bases, prepared, name):
    p = prepared[name]
    old, new = embeddings(bases[name]), embeddings(p.out)
    added = len(p.added)
    assert p.tied == (name == "exact-tied") and p.rows_before == p.tokens_before == old["input"].shape[0]
    assert p.rows_after == p.tokens_before + added
    for matrix in ("input",) if p.tied else ("input", "output"):
        assert new[matrix].shape[0] == p.rows_after
        assert torch.equal(new[matrix][:p.rows_before], old[matrix])
        assert torch.allclose(new[matrix][p.rows_before:], old[matrix].mean(0).expand(added, -1), atol=1e-6)
    if p.tied:
        assert new["output"] is None and AutoModelForCausalLM.from_pretrained(p.out).config.tie_word_embeddings
    else:
        assert not torch.allclose(new["input"][-1], new["output"][-1])  # each matrix its own mean
    assert json.loads((p.out / "config.json").read_text())["vocab_size"] == p.rows_after


def test_untied_qwen3_sets_only_its_new_ids(bases, prepared):
    p = prepared["qwen3"]
    old, new = embeddings(bases["qwen3"]), embeddings(p.out)
    tok = AutoTokenizer.from_pretrained(p.out)
    added, kept = tok.convert_tokens_to_ids(p.added), tok.convert_tokens_to_ids(["<think>", "</think>"])
    for matrix in ("input", "output"):
        assert torch.allclose(new[matrix][added], old[matrix][:p.tokens_before].mean(0).expand(len(added), -1),
                              atol=1e-6)
        assert torch.equal(new[matrix][kept], old[matrix][kept])


@pytest.mark.parametrize("name", ["qwen2", "qwen3"])
def test_chat_template_renders_the_projects_prompt(prepared, name):
    tok = AutoTokenizer.from_pretrained(prepared[name].out)
    assert prepared[name].style == "chatml"
    for budget, token in ((40, "<COMP_40>"), ("auto", "<COMP_AUTO>"), (None, "")):
        text = tok.apply_chat_template([{"role": "user", "content": budget_prompt(QUESTION, budget)}],
                                       add_generation_prompt=True, tokenize=False)
        # Qwen2.5's default system message and Qwen3's think block are gone; the markers stay.
        assert text == f"<|im_start|>user\n{QUESTION}{' ' + token if token else ''}<|im_end|>\n<|im_start|>assistant\n"
    ids = prompt_ids(tok, QUESTION, 40, THINK_OPEN)
    assert ids[-1] == tok.convert_tokens_to_ids(THINK_OPEN)
    assert tok.decode(ids, skip_special_tokens=True) == f"user\n{QUESTION}<COMP_40>\nassistant\n{THINK_OPEN}"
    response = tok.apply_chat_template([{"role": "user", "content": QUESTION},
                                        {"role": "assistant", "content": "<think> x </think> 7"}], tokenize=False)
    assert response.endswith("<|im_start|>assistant\n<think> x </think> 7" + tok.eos_token)


def test_turn_markers_follow_the_base_template():
    vocab = {t: i for i, t in enumerate(["<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>",
                                         "<|eot_id|>"])}
    assert chat_style("{{ '<|im_start|>' + m }}<|im_end|>", vocab) == "chatml"
    assert chat_style("<|start_header_id|>{{ r }}<|end_header_id|>{{ c }}<|eot_id|>", vocab) == "llama3"
    assert chat_style(None, vocab) == chat_style("<|im_start|>", {}) == chat_style("{{ c }}", vocab) == "plain"
    messages = [{"role": "user", "content": "q <COMP_60>"}]

    def render(style):
        return jinja2.Template(chat_template(style)).render(messages=messages, add_generation_prompt=True,
                                                            bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")

    assert render("llama3") == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nq <COMP_60><|eot_id|>"
                                "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert render("plain") == "<|begin_of_text|>q <COMP_60>\n"


def test_bad_folders_are_refused_with_the_folder_and_the_problem(bases, tmp_path):
    with pytest.raises(PrepareError, match=f"{tmp_path / 'nowhere'}: no such folder"):
        prepare_model(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrepareError, match=f"{tmp_path / 'empty'}: no config.json"):
        prepare_model(tmp_path / "empty", tmp_path / "out")
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(PrepareError, match=r"gpt2: unsupported architecture \['GPT2LMHeadModel'\].*Qwen3ForCausalLM"):
        prepare_model(gpt2, tmp_path / "out")
    with pytest.raises(PrepareError, match="already exists and is not an empty folder"):
        prepare_model(bases["qwen2"], gpt2)
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    for file in bases["qwen2"].iterdir():
        if file.suffix != ".safetensors":
            (weightless / file.name).write_bytes(file.read_bytes())
    with pytest.raises(PrepareError, match=f"{weightless}: cannot load its weights"):
        prepare_model(weightless, tmp_path / "out")
    # The base tokenizer itself fails the check that guards the output: `<step>` is several pieces.
    with pytest.raises(PrepareError, match=rf"{bases['qwen2']}: format token <think> encodes to [2-9] ids \(<"):
        check_tokenizer(AutoTokenizer.from_pretrained(bases["qwen2"]), bases["qwen2"])


def test_command_without_vllm(bases, tmp_path, capsys):
    assert main(["--base", str(bases["qwen3"]), "--out", str(tmp_path / "out"), "--no-check-vllm"], "prog") == 0
    assert "8 format tokens added" in capsys.readouterr().out
    assert main(["--base", str(tmp_path), "--out", str(tmp_path / "out2"), "--no-check-vllm"], "prog") == 2
    assert f"prog: error: {tmp_path}: no config.json" in capsys.readouterr().err


@pytest.mark.system
def test_command_prepares_a_model_vllm_serves(tmp_path):
    base = build_real_like(tmp_path / "base", "qwen2")  # tied, untied here: vLLM serves its own LM head
    env = {**os.environ, "VLLM_CACHE_ROOT": str(tmp_path / "vllm-cache")}
    script = "import sys; from cli.prepare_model import main; sys.exit(main(sys.argv[1:], 'accordion prepare-model'))"
    proc = subprocess.run([sys.executable, "-c", script, "--base", str(base), "--out", str(tmp_path / "out"),
                           "--untie-embeddings"], check=False, capture_output=True, text=True, env=env, timeout=600,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "10 format tokens added" in proc.stdout and "(untied here output)" in proc.stdout
    assert "vLLM serves" in proc.stdout and "lm_head.weight" in load_file(tmp_path / "out" / "model.safetensors")
    assert len(AutoTokenizer.from_pretrained(tmp_path / "out").encode("<COMP_AUTO>", add_special_tokens=False)) == 1


def test_untie_gives_a_tied_head_its_own_copy_with_the_same_logits(bases, prepared, tmp_path):
    p = prepare_model(bases["qwen2"], tmp_path / "untied", untie=True)
    assert p.untied and not p.tied
    weights, tied = embeddings(p.out), embeddings(prepared["qwen2"].out)
    # The new rows at the mean in both matrices, as the tied model has them in its one.
    assert torch.equal(weights["output"], weights["input"]) and torch.equal(weights["input"], tied["input"])
    model = AutoModelForCausalLM.from_pretrained(p.out)
    before = AutoModelForCausalLM.from_pretrained(prepared["qwen2"].out)
    assert not model.config.tie_word_embeddings and not ties_embeddings(p.out)
    assert ties_embeddings(prepared["qwen2"].out)
    assert model.lm_head.weight is not model.get_input_embeddings().weight
    ids = torch.tensor([AutoTokenizer.from_pretrained(p.out).encode(budget_prompt(QUESTION, "auto"))])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, before(ids).logits)
    # An untied base has nothing to untie.
    assert not prepare_model(bases["qwen3"], tmp_path / "qwen3", untie=True).untied


def test_a_weighted_choice_on_a_tied_model_is_warned_with_the_way_out():
    weighted = load_config(overrides=["learner.choice_weight=10"])
    assert "auto" in weighted.rl.budgets
    warning = tied_choice_warning(weighted, "runs/m", tied=True)
    assert warning.startswith("warning: runs/m ties its LM head") and "choice_weight 10 " in warning
    assert "--untie-embeddings" in warning and "model.tie_word_embeddings=false" in warning
    assert tied_choice_warning(weighted, "runs/m", tied=False) is None
    assert tied_choice_warning(load_config(overrides=["learner.choice_weight=1"]), "runs/m", tied=True) is None
    assert tied_choice_warning(load_config(overrides=["learner.choice_weight=10", "rl.budgets=[100]"]),
                               "runs/m", tied=True) is None


def test_rl_after_a_tied_sft_starts_from_an_untied_copy_when_the_choice_is_weighted(tmp_path, capsys):
    from cli.train import rl_start
    from models.build import build_tiny_model

    weighted = load_config(overrides=["learner.choice_weight=10", "model.tie_word_embeddings=true"])
    checkpoint = build_tiny_model(weighted.model, tmp_path / "sft" / "checkpoint")
    assert ties_embeddings(checkpoint)
    assert rl_start(load_config(overrides=["learner.choice_weight=1"]), checkpoint) == checkpoint
    untied = rl_start(weighted, checkpoint)
    assert untied == tmp_path / "sft" / "untied" and not ties_embeddings(untied) and ties_embeddings(checkpoint)
    assert "RL starts from" in capsys.readouterr().out
    ids = torch.tensor([AutoTokenizer.from_pretrained(untied).encode(budget_prompt("x = 3 . op 1 : + 4 .", "auto"))])
    with torch.no_grad():
        assert torch.allclose(AutoModelForCausalLM.from_pretrained(untied)(ids).logits,
                              AutoModelForCausalLM.from_pretrained(checkpoint)(ids).logits)
    assert rl_start(weighted, checkpoint) == untied and capsys.readouterr().out == ""  # made once, then reused
