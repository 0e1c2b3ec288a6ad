import subprocess
import sys

import pytest
import yaml

from configs import LOCAL, ConfigError, load_config


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_local_yaml_loads_with_defaults():
    cfg = load_config(LOCAL)
    assert cfg.task.name == "arithmetic"
    assert cfg.task.lax_fraction == yaml.safe_load(LOCAL.read_text())["task"]["lax_fraction"]
    assert cfg.model.max_position_embeddings == 2048  # a default not set in the file


@pytest.mark.parametrize("path", sorted(LOCAL.parent.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    load_config(path)


def test_overrides_are_typed_and_applied():
    cfg = load_config(LOCAL, ["task.max_steps=4", "model.hidden_size=128", "task.lax_fraction=0.25"])
    assert (cfg.task.max_steps, cfg.model.hidden_size, cfg.task.lax_fraction) == (4, 128, 0.25)


def test_config_is_frozen():
    cfg = load_config(None)
    with pytest.raises(Exception):
        cfg.task.max_steps = 3


def test_unknown_key_names_file_line_and_key(tmp_path):
    path = write(tmp_path, "task:\n  min_steps: 2\n  max_stepz: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}:3: task.max_stepz: unknown key"


def test_wrong_type_names_key(tmp_path):
    path = write(tmp_path, "model:\n  hidden_size: wide\n")
    with pytest.raises(ConfigError, match=r":2: model.hidden_size: .*integer"):
        load_config(path)


def test_out_of_bounds_value(tmp_path):
    with pytest.raises(ConfigError, match=r"task.lax_fraction: .*less than or equal to 1"):
        load_config(write(tmp_path, "task:\n  lax_fraction: 1.5\n"))


def test_cross_field_check_names_section():
    with pytest.raises(ConfigError, match=r"task: .*min_steps 5 is larger than max_steps 3"):
        load_config(None, ["task.min_steps=5", "task.max_steps=3"])


def test_colocation_refuses_rollouts_ahead_of_training():
    with pytest.raises(ConfigError, match=r"cluster.colocate .* set rl.max_staleness 0 \(it is 1\)"):
        load_config(None, ["cluster.colocate=true", "rl.max_staleness=1"])


def test_unknown_override_is_attributed_to_command_line():
    with pytest.raises(ConfigError, match=r"^command-line override: model.depth: unknown key$"):
        load_config(LOCAL, ["model.depth=3"])


@pytest.mark.parametrize("bad", ["noequals", "=3", "task..x=1"])
def test_malformed_override(bad):
    with pytest.raises(ConfigError, match="expected the form key.sub=value"):
        load_config(None, [bad])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml_gives_line(tmp_path):
    path = write(tmp_path, "task:\n  min_steps: 2\n   max_steps: [\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+: invalid YAML"):
        load_config(path)


def test_cli_prints_one_line_error_without_traceback(tmp_path):
    path = write(tmp_path, "task:\n  max_stepz: 4\n")
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "task", "--config", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"accordion task: error: {path}:2: task.max_stepz: unknown key"


def test_cli_help_lists_commands():
    proc = subprocess.run([sys.executable, "-m", "cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "init-model" in proc.stdout and "task" in proc.stdout


def test_generator_cpu_ids_must_be_cores_this_process_may_use():
    import os

    from actors.generator import Generator
    from configs.schema import GeneratorConfig

    bad = max(os.sched_getaffinity(0)) + 1
    with pytest.raises(ValueError, match=rf"generator.cpu_ids \[{bad}\]: this process may only use cores"):
        Generator("no-model-needed", GeneratorConfig(cpu_ids=[bad]))


@pytest.mark.parametrize("override,message", [
    ("learner.precision=fp16", "learner.precision: Input should be 'auto', 'bf16' or 'fp32'"),
    ("rl.budgets=[30]", "command-line override: rl.budgets: Value error, 30 is not a budget: expected one of 20, "),
    ("eval.budgets=[100,7]", "command-line override: eval.budgets: Value error, 7 is not a budget"),
    ("sft.budgets=[auto]", "command-line override: sft.budgets.0: Input should be a valid integer"),
    ("sft.policy_fraction=0.5", "policy_fraction 0.5 needs budgets"),
])
def test_a_bad_precision_or_budget_is_one_clear_config_error(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_chrpo_without_budgets_names_what_to_set():
    with pytest.raises(ConfigError, match="reward.name chrpo rewards budgets: set rl.budgets"):
        load_config(None, ["reward.name=chrpo"])


def test_auto_precision_follows_the_hardware():
    from models.precision import engine_dtype, learner_precision, native_bf16

    assert learner_precision("auto") == ("bf16" if native_bf16() else "fp32")
    assert learner_precision("fp32") == "fp32" and engine_dtype("float32") == "float32"
    assert engine_dtype("auto") == ("bfloat16" if native_bf16() else "float32")
