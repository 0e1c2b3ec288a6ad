"""`accordion bench all --demo DIR`: a finished demo run feeds fold's real row and trl's starting model."""
from argparse import ArgumentParser

import pytest

from cli.bench import demo_args


def test_a_demo_run_gives_fold_its_run_folder_and_trl_its_sft_checkpoint(tmp_path):
    (tmp_path / "sft" / "checkpoint").mkdir(parents=True)
    (tmp_path / "sft" / "checkpoint" / "config.json").write_text("{}")
    (tmp_path / "state.json").write_text('{"step": 80}')
    assert demo_args(tmp_path, ArgumentParser()) == {"fold": ["--real-model", str(tmp_path)],
                                                     "trl": ["--model", str(tmp_path / "sft" / "checkpoint")]}


def test_an_unfinished_demo_is_refused_by_name(tmp_path, capsys):
    (tmp_path / "state.json").write_text('{"step": 80}')  # RL checkpoints, but no SFT checkpoint
    with pytest.raises(SystemExit):
        demo_args(tmp_path, ArgumentParser(prog="bench all"))
    assert f"--demo {tmp_path}: not a finished demo run" in capsys.readouterr().err
