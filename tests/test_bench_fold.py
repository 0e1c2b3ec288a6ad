"""`accordion bench fold`: each trace length gets a KV cache that holds every Fold trajectory at its largest
folded size and not every Unfold one, the comparison the benchmark claims."""
import json
from argparse import ArgumentParser, Namespace

import pytest

from benches.fold import BLOCK, engine_limits, trained_model

DEFAULTS = Namespace(trajectories=8, segment_tokens=512, summary_tokens=32, kv_tokens=None)


def blocks(tokens: int) -> int:
    return -(-tokens // BLOCK) * BLOCK


@pytest.mark.parametrize("trace", [2048, 4096, 8192])
def test_the_cache_holds_every_fold_trajectory_and_not_every_unfold_one(trace):
    limits = engine_limits(40, trace, DEFAULTS)
    kv = blocks(limits["kv_cache_tokens"])
    fold_need = blocks(limits["max_prompt_tokens"] + limits["segment_tokens"])  # as `Generator` admits Fold
    assert kv // fold_need >= DEFAULTS.trajectories
    unfold_at_once = kv // (40 + trace)
    assert 1 <= unfold_at_once < DEFAULTS.trajectories, (trace, kv, unfold_at_once)
    assert limits["max_model_len"] >= 40 + trace and limits["max_tokens"] == trace


def test_the_cache_follows_the_trace_length_and_a_given_size_wins():
    sizes = [engine_limits(40, t, DEFAULTS)["kv_cache_tokens"] for t in (2048, 4096, 8192)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert engine_limits(40, 2048, Namespace(**{**vars(DEFAULTS), "kv_tokens": 20000}))["kv_cache_tokens"] == 20000


def test_the_real_row_takes_a_model_folder_or_a_run_folders_last_checkpoint(tmp_path, capsys):
    run = tmp_path / "demo"
    for step in (70, 80):
        (run / "checkpoints" / f"step_{step}").mkdir(parents=True)
        (run / "checkpoints" / f"step_{step}" / "config.json").write_text("{}")
    (run / "state.json").write_text(json.dumps({"step": 80, "checkpoint": "elsewhere/step_80"}))
    parser = ArgumentParser(prog="bench fold")
    assert trained_model(run, parser) == str(run / "checkpoints" / "step_80")
    assert trained_model(run / "checkpoints" / "step_70", parser) == str(run / "checkpoints" / "step_70")
    with pytest.raises(SystemExit):
        trained_model(tmp_path, parser)  # no state.json, no config.json
    assert f"--real-model {tmp_path}: neither a model folder" in capsys.readouterr().err
