"""The run folder's guard against damaged checkpoints: pure file logic, no Ray."""
import json

import pytest

from cluster.run_dir import STATE, RunFolderError, check_checkpoint, manifest, prepare_run


def checkpoint(folder):
    (folder / "optimizer").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 12_000)  # over 2 MiB: head and tail hashed
    (folder / "optimizer" / "state.pt").write_bytes(b"adam" * 1000)
    return manifest(folder)


def test_an_intact_checkpoint_passes_and_each_kind_of_damage_is_named(tmp_path):
    folder = tmp_path / "step_4"
    files = checkpoint(folder)
    check_checkpoint(folder, files, "test")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-100])  # truncated
    with pytest.raises(RunFolderError, match=r"model.safetensors: 3,071,900 bytes, written as 3,072,000"):
        check_checkpoint(folder, files, "test")
    weights.write_bytes(data[:-1] + b"\x00")  # same size, its last byte rewritten
    with pytest.raises(RunFolderError, match="model.safetensors: its contents changed"):
        check_checkpoint(folder, files, "test")
    weights.write_bytes(data)
    (folder / "optimizer" / "state.pt").unlink()
    with pytest.raises(RunFolderError, match="optimizer/state.pt: missing"):
        check_checkpoint(folder, files, "test")


def test_resume_refuses_a_damaged_checkpoint_before_anything_starts(tmp_path):
    cfg, run_dir, _ = prepare_run(None, [f"run_dir={tmp_path / 'run'}"], None)
    folder = run_dir / "checkpoints" / "step_2"
    (run_dir / STATE).write_text(json.dumps({"step": 2, "checkpoint": str(folder), "checkpoint_files": checkpoint(folder)}))
    assert prepare_run(None, [], str(run_dir))[2]["step"] == 2
    (folder / "optimizer" / "state.pt").write_bytes(b"")
    with pytest.raises(RunFolderError, match=rf"--resume {run_dir}: the checkpoint .*step_2 is damaged "
                                             r"\(optimizer/state.pt: 0 bytes, written as 4,000\); nothing was loaded"):
        prepare_run(None, [], str(run_dir))
