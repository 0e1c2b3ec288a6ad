"""How the trainer turns scored groups into learner samples (pure: no Ray)."""
import pytest

from actors.fold import Segment, Trajectory
from cluster.queue import Group
from cluster.train import Trainer
from configs import load_config


def trajectory(tid, segments):
    segs = [Segment(tid, k, [1, 2], list(range(3, 3 + n)), [-0.1] * n, 0, "stop", "") for k, n in enumerate(segments)]
    return Trajectory(tid, "q", "fold", "auto", segs, "answered", "", "")


def scored(reward, control):
    return {"reward": reward, "control_reward": control}


@pytest.fixture
def trainer(tmp_path):
    return Trainer(load_config(None, [f"run_dir={tmp_path}"]), tmp_path, None)


def test_each_segment_carries_its_trajectory_advantage_and_the_choice_token_its_own(trainer):
    group = Group(0, 0, [trajectory("a", [2, 3]), trajectory("b", [4])], [scored(1.0, 0.5), scored(0.0, 1.5)])
    samples = trainer.samples([group])
    assert [s["advantage"] for s in samples] == [0.5, 0.5, -0.5]
    # Only the first segment holds the budget-choice token; its advantage is the control reward's.
    assert [s["first_advantage"] for s in samples] == [-0.5, None, 0.5]
    assert [len(s["response_ids"]) for s in samples] == [2, 3, 4]


def test_without_a_control_reward_no_token_is_singled_out(trainer):
    group = Group(0, 0, [trajectory("a", [2]), trajectory("b", [2])], [scored(1.0, None), scored(0.0, None)])
    assert all(s["first_advantage"] is None for s in trainer.samples([group]))
