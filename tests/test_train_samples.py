"""How the trainer turns scored groups into learner samples (pure: no Ray)."""

from actors.fold import Segment, Trajectory
from cluster.queue import Group
from cluster.rollouts import informative, segment_samples


def trajectory(tid, segments):
    segs = [Segment(tid, k, [1, 2], list(range(3, 3 + n)), [-0.1] * n, 0, "stop", "") for k, n in enumerate(segments)]
    return Trajectory(tid, "q", "fold", "auto", segs, "answered", "", "")


def scored(reward, control):
    return {"reward": reward, "control_reward": control}


def test_each_segment_carries_its_trajectory_advantage_and_the_choice_token_its_own():
    group = Group(0, 0, [trajectory("a", [2, 3]), trajectory("b", [4])], [scored(1.0, 0.5), scored(0.0, 1.5)])
    samples = segment_samples([group])
    assert [s["advantage"] for s in samples] == [0.5, 0.5, -0.5]
    # Only the first segment holds the budget-choice token; its advantage is the control reward's.
    assert [s["first_advantage"] for s in samples] == [-0.5, None, 0.5]
    assert [len(s["response_ids"]) for s in samples] == [2, 3, 4]


def test_without_a_control_reward_no_token_is_singled_out():
    group = Group(0, 0, [trajectory("a", [2]), trajectory("b", [2])], [scored(1.0, None), scored(0.0, None)])
    assert all(s["first_advantage"] is None for s in segment_samples([group]))


def test_a_batch_mixing_policy_and_fixed_budget_groups_singles_out_only_the_policy_choice():
    policy = Group(0, 0, [trajectory("a", [2]), trajectory("b", [2])], [scored(1.0, 1.2), scored(0.0, 0.2)])
    fixed = Group(1, 0, [trajectory("c", [2]), trajectory("d", [2])], [scored(1.5, None), scored(0.5, None)])
    samples = segment_samples([policy, fixed])
    assert [s["advantage"] for s in samples] == [0.5, -0.5, 0.5, -0.5]
    assert [s["first_advantage"] and round(s["first_advantage"], 6) for s in samples] == [0.5, -0.5, None, None]


def test_truncated_trajectories_leave_the_loss_but_still_set_their_group_mean():
    cut = trajectory("b", [3, 3])
    cut.status = "unfinished"
    group = Group(0, 0, [trajectory("a", [2]), cut, trajectory("c", [1])],
                  [scored(1.0, None), scored(0.0, None), scored(0.5, None)])
    kept = segment_samples([group], mask_truncated=True)
    assert [len(s["response_ids"]) for s in kept] == [2, 1]
    assert [s["advantage"] for s in kept] == [0.5, 0.0]  # the mean 0.5 includes the truncated 0.0
    assert len(segment_samples([group], mask_truncated=False)) == 4


def test_a_group_is_informative_when_rewards_or_control_rewards_differ():
    assert not informative([scored(1.0, None), scored(1.0, None)])
    assert informative([scored(1.0, None), scored(0.0, None)])
    assert informative([scored(1.0, 1.2), scored(1.0, 1.0)])  # same answer, different budget choices


def test_the_share_of_groups_nothing_is_learnt_from_is_logged():
    from cluster.train import rollout_metrics

    def group(index, *rewards):
        return Group(index, 0, [trajectory(f"{index}{k}", [2]) for k in range(len(rewards))],
                     [{**scored(r, None), "correct": r > 0} for r in rewards])

    uniform, mixed = group(0, 1.0, 1.0), group(1, 1.0, 0.0)
    assert rollout_metrics([uniform, mixed, mixed], version=1)["reward/uniform_groups"] == 1 / 3
