"""`LearnerGroup`: N Ray actors, one `Learner` (DeepSpeed rank) each, forming one torch.distributed
group (gloo on CPU, NCCL on GPU).

    driver ── ray.put(batch) ──► rank 0 … rank N-1   (each takes its token-balanced share)
                                   └── all-reduce / ZeRO collectives among themselves ──┘
    rank 0 ── full weights / metrics / weight sync (`models.sync`) ──► driver, generators

Every method is blocking and returns plain results (rank 0's, after every rank has finished); to
overlap training with generation, call it from a thread. A rank that fails raises here with its
rank named, without waiting for the others (which may be stuck in a collective: `shutdown`); a rank
whose process is gone raises `LearnerDied`, even when a peer's collective failed first.
"""
from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from configs.schema import LearnerConfig
from learners.batch import Sample
from learners.learner import Learner, Loss
from models.sync import Sent
from models.weights import DEFAULT_BUCKET_BYTES


def _rendezvous() -> tuple[str, int]:
    """This node's address and a free port, for rank 0's TCP store."""
    import ray

    with socket.socket() as s:
        s.bind(("", 0))
        return ray.util.get_node_ip_address(), s.getsockname()[1]


class LearnerDied(RuntimeError):
    """A learner rank's process is gone (killed, out of memory, its node lost): the group is unusable,
    but nothing is wrong with the job's inputs, so it can be rebuilt from a checkpoint."""

    def __init__(self, rank: int, cause: BaseException):
        # Ray's message spans lines of ids; its last line says why the process is gone.
        why = [line.strip() for line in str(cause).splitlines() if line.strip()] or [type(cause).__name__]
        super().__init__(f"learner rank {rank} died ({why[-1]})")
        self.rank, self.cause = rank, cause


class LearnerGroup:
    """`ranks` learners on `model_path`. Each actor reserves `cpus` and `gpus` and runs `threads` torch
    threads (default: `cpus`); with a `placement_group`, rank i goes to bundle i (see
    `cluster.placement.placement_groups`)."""

    def __init__(self, model_path: str | Path, cfg: LearnerConfig, ranks: int = 1, cpus: float = 1.0,
                 gpus: float = 0.0, placement_group: Any = None, threads: int | None = None):
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if ranks < 1:
            raise ValueError(f"ranks must be at least 1, got {ranks}")

        def options(rank: int) -> dict[str, Any]:
            opts: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus}
            if placement_group is not None:
                opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(placement_group, rank)
            return opts

        addr, port = ray.get(ray.remote(_rendezvous).options(**options(0)).remote())
        actor = ray.remote(Learner)
        threads = threads or max(1, int(cpus))  # torch threads per rank
        self.actors = [
            actor.options(**options(rank)).remote(str(model_path), cfg, rank, ranks, addr, port, threads)
            for rank in range(ranks)
        ]
        self.cfg, self.ranks = cfg, ranks
        described = self._call("describe")[0]
        self.precision: str = described["precision"]
        """What rank 0 resolved `learner.precision` to (`auto` depends on its hardware)."""
        self.machine: str = described["machine"]

    def _gather(self, refs: list) -> list:
        """Results of every rank; the first failure raises at once, naming its rank."""
        import ray

        pending = {ref: rank for rank, ref in enumerate(refs)}
        results: dict[int, Any] = {}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            rank = pending.pop(done[0])
            try:
                results[rank] = ray.get(done[0])
            except ray.exceptions.RayTaskError as err:
                # A rank that died fails its peers' collectives; if one did, that is the cause to report.
                raise self._dead_rank(pending) or err.as_instanceof_cause() from None
            except ray.exceptions.RayActorError as err:
                raise LearnerDied(rank, err) from None
        return [results[r] for r in range(len(refs))]

    @staticmethod
    def _dead_rank(pending: dict, grace_s: float = 10.0) -> LearnerDied | None:
        """Among the calls still `pending` (ref -> rank), one whose rank died within `grace_s`."""
        import ray

        deadline = time.monotonic() + grace_s
        while pending and (left := deadline - time.monotonic()) > 0:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=left)
            if not done:
                return None
            rank = pending.pop(done[0])
            try:
                ray.get(done[0])
            except ray.exceptions.RayActorError as err:
                return LearnerDied(rank, err)
            except ray.exceptions.RayTaskError:
                pass
        return None

    def _call(self, method: str, *args: Any) -> list:
        return self._gather([getattr(a, method).remote(*args) for a in self.actors])

    def train_step(self, batch: Sequence[Sample | Mapping], loss: Loss = "policy") -> dict[str, float]:
        """One optimizer step on `batch`; see `Learner.train_step` for the metrics."""
        import ray

        return self._call("train_step", ray.put(list(batch)), loss)[0]

    def recompute_logprobs(self, batch: Sequence[Sample | Mapping]) -> list[list[float]]:
        """Per sample, the logprobs of its response tokens under the current weights."""
        import ray

        shares = self._call("recompute_logprobs", ray.put(list(batch)))
        return [next(s[i] for s in shares if s[i] is not None) for i in range(len(batch))]

    def state_dict(self) -> dict[str, Any]:
        """Full weights (HF names; tied weights once) from rank 0."""
        return self._call("full_state")[0]

    def open_sync(self, backend: str) -> dict[str, Any]:
        """Rank 0 opens a fresh sender end of the `models.sync` backend `backend`; returns what every
        receiver needs to join (`Learner.open_sync`)."""
        return self._call("open_sync", backend)[0]

    def join_sync(self, world_size: int, meta: dict[str, Any]) -> None:
        """Rank 0 joins as the sync's rank 0; with a group backend it blocks until every member joined
        (call it from a thread while the generators join)."""
        self._call("join_sync", world_size, meta)

    def send_weights(self, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> Sent:
        """Send the weights in buckets of at most `bucket_bytes`; with a collective backend the
        generators must be receiving. Returns what the receivers are given (`models.sync.Sent`)."""
        return self._call("send_weights", bucket_bytes)[0]

    def sent_weights(self) -> tuple[list, str] | None:
        """The buckets (object refs) and checksum last sent (None before the first send)."""
        return self._call("sent_weights")[0]

    def finalize_sync(self) -> None:
        """Every generator has the last send: rank 0 releases what it held for them."""
        self._call("finalize_sync")

    def save(self, path: str | Path, state: Mapping[str, Any] | None = None) -> None:
        """A checkpoint that transformers/vLLM load as a model folder; see `Learner.save`."""
        self._call("save", str(path), dict(state or {}))

    def load(self, path: str | Path) -> dict[str, Any]:
        """Restore everything `save` wrote; returns the saved training state."""
        return self._call("load", str(path))[0]

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
