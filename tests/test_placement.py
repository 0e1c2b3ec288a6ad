import pytest

from configs.schema import ClusterConfig
from cluster.placement import PlacementError, check_resources, roles


def test_default_local_placement_fits_two_cores():
    check_resources(ClusterConfig(), {"CPU": 2.0})


def test_too_many_cpus_fails_with_the_numbers():
    cfg = ClusterConfig(generators=2, generator_cpus=1, learners=4, learner_cpus=1)
    with pytest.raises(PlacementError) as err:
        check_resources(cfg, {"CPU": 2.0})
    assert str(err.value) == "cluster config needs 6 CPU (generators 2, learners 4) but the Ray cluster has 2"


def test_gpus_asked_on_a_cpu_cluster():
    cfg = ClusterConfig(generator_gpus=1, learners=2, learner_gpus=1)
    with pytest.raises(PlacementError, match=r"needs 3 GPU \(generators 1, learners 2\) but the Ray cluster has 0"):
        check_resources(cfg, {"CPU": 64.0})


def test_bundles_leave_out_zero_gpus():
    assert [r.bundle for r in roles(ClusterConfig())] == [{"CPU": 1.0}, {"CPU": 0.5}, {"CPU": 0.0}]
