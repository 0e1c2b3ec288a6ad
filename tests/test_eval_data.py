"""`accordion eval --data SET --protocol PRESET`: preset resolution, the max-tokens clamp, what the protocol
stores and the argument errors (no engine); then one real run on GSM8K with a tiny model built on the fly,
read back from the JSON and from MLflow (system)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli import main as accordion
from cli.eval import clamp_max_tokens, describe, main, run_metrics, sampling, traces_file
from configs.schema import Config, EvalConfig, GeneratorConfig, ModelConfig
from evals.runner import PRESETS, Protocol, protocols

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the clone
E, G = EvalConfig(samples=4, temperature=0.8, top_p=0.95), GeneratorConfig(max_tokens=1536)


def test_without_a_preset_the_config_decides():
    assert sampling(E, G, None) == {"samples": 4, "temperature": 0.8, "top_p": 0.95, "max_tokens": 1536}


def test_presets_are_the_papers_protocols_and_leave_the_rest_to_the_config():
    assert sampling(E, G, "accordion") == {"samples": 8, "temperature": 1.0, "top_p": 1.0, "max_tokens": 1536}
    assert sampling(E, G, "extra-cot") == {"samples": 4, "temperature": 0.7, "top_p": 0.9, "max_tokens": 4096}
    assert set(PRESETS) == {"accordion", "extra-cot"}


def test_explicit_options_override_the_preset():
    got = sampling(E, G, "extra-cot", samples=2, temperature=0.5, max_tokens=100)
    assert got == {"samples": 2, "temperature": 0.5, "top_p": 0.9, "max_tokens": 100}
    assert sampling(E, G, "accordion", top_p=0.5)["top_p"] == 0.5


def test_values_out_of_the_configs_bounds_are_refused_by_option_name():
    with pytest.raises(ValueError, match="--top-p 1.5"):
        sampling(E, G, None, top_p=1.5)
    with pytest.raises(ValueError, match="--temperature 0"):
        sampling(E, G, "accordion", temperature=0.0)


def test_max_tokens_beyond_the_context_are_clamped_with_a_note():
    assert clamp_max_tokens(1536, 2048) == (1536, None)
    assert clamp_max_tokens(2048, 2048) == (2048, None)
    used, note = clamp_max_tokens(4096, 512)
    assert used == 512 and "4096" in note and "clamped to 512" in note


def test_the_protocol_stores_sampling_limits_preset_and_data():
    p = Protocol(3, 2, 0.7, 0.9, True, data="gsm8k", preset="extra-cot", max_tokens=512, max_tokens_requested=4096,
                 segment_tokens=48, max_segments=4, max_prompt_tokens=256, max_model_len=512)
    assert p.as_dict() == {"questions": 3, "samples": 2, "temperature": 0.7, "top_p": 0.9, "greedy": True,
                           "data": "gsm8k", "preset": "extra-cot", "max_tokens": 512, "max_tokens_requested": 4096,
                           "segment_tokens": 48, "max_segments": 4, "max_prompt_tokens": 256, "max_model_len": 512}
    line = describe(p)
    for part in ("gsm8k", "3 questions", "k=2 + greedy", "temperature 0.7", "top-p 0.9", "512 (asked 4096)",
                 "4 segments x 48 tokens", "preset extra-cot"):
        assert part in line, (part, line)
    # The training job's protocols record the generator section's limits too.
    final = protocols(Config(eval=EvalConfig(questions=10, samples=3))).get("final").as_dict()
    assert final["questions"] == 10 and final["samples"] == 3 and final["data"] == "builtin"
    assert final["max_tokens"] == GeneratorConfig().max_tokens and final["preset"] is None


def test_trajectories_go_beside_the_results_under_their_name():
    assert traces_file(Path("runs/eval/final.json")) == Path("runs/eval/final.traces.jsonl")
    assert traces_file(Path("final")) == Path("final.traces.jsonl")


def test_cells_become_mlflow_metric_names():
    metrics = run_metrics({"fold@40": {"accuracy": 0.5, "chosen": {"20": 0.25}}, "unfold": {"pass_at_k": 1.0}})
    assert metrics == {"fold_40/accuracy": 0.5, "fold_40/chosen_20": 0.25, "unfold/pass_at_k": 1.0}


def run_main(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--model", "nowhere", "--out", "x.json", *args], prog="accordion eval")
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_harder_is_for_the_built_in_task_only(capsys):
    assert "--harder is for the built-in task only, not --data gsm8k" in run_main(["--data", "gsm8k", "--harder"],
                                                                                  capsys)


def test_an_unknown_data_set_is_refused(capsys):
    err = run_main(["--data", "gsm9k"], capsys)
    assert "invalid choice: 'gsm9k'" in err and "math500" in err


def test_a_missing_data_file_is_one_clear_error(tmp_path, capsys):
    code = accordion(["eval", "--model", "nowhere", "--out", str(tmp_path / "x.json"), "--data", "aime24",
                      f"task.data_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and f"{tmp_path / 'aime24.jsonl'}: file not found" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from models.build import build_tiny_model

    return build_tiny_model(ModelConfig(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                                        intermediate_size=128, max_position_embeddings=512),
                            tmp_path_factory.mktemp("eval-data") / "model")


def test_a_context_longer_than_the_models_positions_is_a_clear_error(tiny_model, tmp_path, capsys):
    # The default config's generator.max_model_len (2048) exceeds the 512 positions: vLLM would fail deep inside.
    code = main(["--model", str(tiny_model), "--out", str(tmp_path / "x.json"), "--limit", "1"], prog="accordion eval")
    err = capsys.readouterr().err
    assert code == 2 and "has 512 positions" in err and "generator.max_model_len=512" in err


@pytest.mark.system
@pytest.mark.skipif(not (DATA / "gsm8k_test.jsonl").is_file(), reason=f"no {DATA}/gsm8k_test.jsonl")
def test_gsm8k_with_the_extra_cot_protocol_into_json_and_mlflow(tiny_model, tmp_path):
    out = tmp_path / "eval" / "gsm8k.json"
    small = [f"task.data_dir={DATA}", "generator.max_model_len=512", "generator.segment_tokens=48",
             "generator.max_segments=4", "generator.max_prompt_tokens=256", "reward.processes=1"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run([sys.executable, "-m", "cli", "eval", "--model", str(tiny_model), "--data", "gsm8k",
                           "--limit", "3", "--samples", "2", "--modes", "fold", "unfold", "--protocol", "extra-cot",
                           "--mlflow", "--out", str(out), *small], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "clamped to 512" in log and "protocol: gsm8k, 3 questions, k=2 + greedy, temperature 0.7, top-p 0.9" in log

    result = json.loads(out.read_text())
    p = result["protocol"]
    assert (p["temperature"], p["top_p"], p["samples"], p["questions"]) == (0.7, 0.9, 2, 3)
    assert (p["max_tokens"], p["max_tokens_requested"], p["preset"], p["data"]) == (512, 4096, "extra-cot", "gsm8k")
    assert (p["segment_tokens"], p["max_segments"], p["max_prompt_tokens"], p["max_model_len"]) == (48, 4, 256, 512)
    assert result["data"] == "gsm8k" and result["model"] == str(tiny_model) and result["precision"] and result["cpu"]
    assert {name.split("@")[0] for name in result["cells"]} == {"fold", "unfold"}
    for metrics in result["cells"].values():
        assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["pass_at_k"] <= 1
    assert {"fold_accuracy", "unfold_accuracy"} <= set(result["final"])

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out.parent / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("accordion-rl-eval").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id in log
    run = runs[0]
    assert run.data.params["temperature"] == "0.7" and run.data.params["max_tokens_requested"] == "4096"
    for name, metrics in result["cells"].items():
        assert run.data.metrics[f"{name.replace('@', '_')}/accuracy"] == pytest.approx(metrics["accuracy"])
        assert run.data.metrics[f"{name.replace('@', '_')}/pass_at_k"] == pytest.approx(metrics["pass_at_k"])
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ["gsm8k.json", "gsm8k.traces.jsonl"]
