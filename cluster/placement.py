"""Where each role runs: one placement group per role, bundles sized from the `cluster` section.

The resource check runs before anything starts, so a config that asks for more than the Ray
cluster has fails at once with the numbers instead of hanging on an unschedulable actor.
"""
from __future__ import annotations

from dataclasses import dataclass

from configs.schema import ClusterConfig


class PlacementError(ValueError):
    """The config asks for resources the cluster does not have."""


@dataclass(frozen=True)
class Role:
    name: str
    count: int
    cpus: float
    gpus: float

    @property
    def bundle(self) -> dict[str, float]:
        return {"CPU": self.cpus, **({"GPU": self.gpus} if self.gpus else {})}


def roles(cfg: ClusterConfig) -> list[Role]:
    return [
        Role("generators", cfg.generators, cfg.generator_cpus, cfg.generator_gpus),
        Role("learners", cfg.learners, cfg.learner_cpus, cfg.learner_gpus),
        Role("reward_workers", cfg.reward_workers, cfg.reward_cpus, 0.0),
    ]


def check_resources(cfg: ClusterConfig, available: dict[str, float]) -> None:
    """Raise `PlacementError` naming each resource the roles need more of than `available` has."""
    problems = []
    for resource in ("CPU", "GPU"):
        needs = {r.name: r.count * r.bundle.get(resource, 0.0) for r in roles(cfg)}
        total, have = sum(needs.values()), available.get(resource, 0.0)
        if total > have:
            detail = ", ".join(f"{name} {need:g}" for name, need in needs.items() if need)
            problems.append(f"needs {total:g} {resource} ({detail}) but the Ray cluster has {have:g}")
    if problems:
        raise PlacementError("cluster config " + "; ".join(problems))


def placement_groups(cfg: ClusterConfig) -> dict[str, object]:
    """Reserve one placement group per role and wait until all are ready."""
    import ray
    from ray.util.placement_group import placement_group

    # The cluster's totals, not what is free this instant: actors killed a moment ago (the SFT learners
    # before RL) return their CPUs asynchronously; a busy cluster makes the reservation wait below.
    check_resources(cfg, ray.cluster_resources())
    groups = {
        r.name: placement_group([r.bundle] * r.count, strategy=cfg.strategy, name=f"accordion-{r.name}")
        for r in roles(cfg)
        if r.count and any(r.bundle.values())  # Ray rejects empty bundles; such actors need no reservation
    }
    ray.get([pg.ready() for pg in groups.values()], timeout=cfg.placement_timeout_s)
    return groups
