"""`accordion bench sync`: bucketed vs per-tensor weight sync of the config's model (`model.*`).

Every method moves the same weights from one DeepSpeed rank (`LearnerGroup`, 1 rank) into a running
vLLM generator (a one-actor `GeneratorPool`) and ends in one verified reload (checksum, then the
engine's in-place reload):

  bucketed    ours, `rl.sync_backend: objstore`: the driver's `WeightSync.sync` (buckets of `--bucket-mb`,
              put in the object store by the learner, one receive call, one engine call).
  per_tensor  the peer (OpenRLHF) pattern: one generator call per parameter, each crossing into the
              engine's worker (`GeneratorActor.stage`, a one-tensor bucket each), then `load_staged`.
              The worker buffers each tensor until its layer is complete either way (vLLM's layerwise
              reload), so the gap is the per-tensor calls.
  gloo        ours, `rl.sync_backend: gloo`: `WeightSync.sync`, learner rank 0 broadcasting the buckets
              over a side group.

Topologies are built before the clock starts (`WeightSync.open`), as the RL job does at start.
`sync_fraction_of_step` = bucketed / (one `train_step` on `--samples` samples of `--tokens` tokens, plus
generating `--samples` trajectories of up to `--tokens` tokens on the same generator): both measured here.

The learner trains in `learner.precision` and the engine runs in `generator.dtype` (`auto`: bf16 only where
it is native; on a CPU without it one bf16 step of a 95 M-parameter model took over 10 minutes).
`accordion bench all` syncs a 95 M-parameter model: `model.hidden_size=768 model.num_layers=14
model.num_heads=12 model.num_kv_heads=3 model.intermediate_size=2304`.
"""
from __future__ import annotations

import asyncio
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

from benches import bench_parser, figure, report
from configs import config_from_args


def main(argv: list[str], prog: str) -> int:
    parser = bench_parser(prog, __doc__)
    parser.add_argument("--bucket-mb", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="syncs per method; the median is reported")
    parser.add_argument("--samples", type=int, default=16, help="samples in the step the sync is compared with")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per sample (a quarter of them prompt)")
    args = parser.parse_args(argv)
    result = run(args, config_from_args(args))
    params = result["settings"]["parameters"] / 1e6
    figures = [
        figure(f"M params/s synced ({params:.3g} M), bucketed vs per-tensor RPCs",
               params / result["bucketed_s"], params / result["per_tensor_s"]),
        figure(f"M params/s synced ({params:.3g} M), gloo broadcast vs per-tensor RPCs",
               params / result["gloo_s"], params / result["per_tensor_s"]),
        figure("bucketed sync as a share of one RL step", result["sync_fraction_of_step"]),
    ]
    report(args.out, result, figures, f"learner {result['learner_precision']}, generator {result['generator_dtype']}")
    return 0


def run(args, cfg) -> dict:
    import ray

    from actors.fold import RolloutRequest
    from cluster.generators import GeneratorPool
    from cluster.weight_sync import WeightSync
    from configs.schema import ClusterConfig, GeneratorConfig, TaskConfig
    from learners.group import LearnerGroup
    from models.build import resolve_model
    from tasks.arithmetic import problems

    work = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    model = resolve_model(cfg.model, work)
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS", "local"),
                 runtime_env={"env_vars": {"VLLM_CACHE_ROOT": str(work / "vllm")}})
    learners = LearnerGroup(model, cfg.learner, ranks=1)
    gen_cfg = GeneratorConfig(**{**cfg.generator.model_dump(), "max_tokens": args.tokens,
                                 "segment_tokens": args.tokens, "max_prompt_tokens": 256,
                                 "max_model_len": 256 + args.tokens})
    pool = GeneratorPool(str(model), gen_cfg, ClusterConfig(generators=1, generator_cpus=1), seed=0)
    actor = pool.actors[0]
    bucket_bytes = args.bucket_mb << 20
    times: dict[str, list[float]] = {}

    def per_tensor(version: int) -> None:
        sent = learners.send_weights(1)  # a bucket never splits a tensor: one tensor each
        for ref in sent.refs:
            ray.get(actor.stage.remote(ref))
        ray.get(actor.load_staged.remote(version, sent.checksum))
        learners.finalize_sync()

    async def measure() -> tuple[list, float]:
        await pool.start()
        version = 0
        # One backend open at a time (a learner holds one sender): objstore's methods, then gloo's.
        for backend, methods in (("objstore", ("bucketed", "per_tensor")), ("gloo", ("gloo",))):
            sync = WeightSync(learners, pool, backend, bucket_bytes)
            await sync.open()
            for _ in range(args.repeats):
                for name in methods:
                    version += 1
                    start = time.perf_counter()
                    if name == "per_tensor":
                        per_tensor(version)
                    else:
                        await sync.sync(version)
                    times.setdefault(name, []).append(time.perf_counter() - start)
        # One RL step of the same model: generate the batch, then train on it.
        questions = [p.question for p in problems(TaskConfig(eval_size=args.samples), "eval")]
        start = time.perf_counter()
        out = await pool.rollout([RolloutRequest(f"s{i}", q, mode="unfold") for i, q in enumerate(questions)])
        return out, time.perf_counter() - start

    trajectories, generate_s = asyncio.run(measure())
    prompt = args.tokens // 4
    batch = [{"prompt_ids": [5] * prompt, "response_ids": [6 + i % 20] * (args.tokens - prompt),
              "advantage": 1.0 if i % 2 else -1.0} for i in range(args.samples)]
    start = time.perf_counter()
    learners.train_step(batch)
    train_s = time.perf_counter() - start
    ray.get(actor.shutdown.remote())
    pool.shutdown()
    learners.shutdown()

    sizes = [math.prod(s) for s in shapes(model)]
    med = {k: statistics.median(v) for k, v in times.items()}
    step_s = generate_s + train_s
    return {
        "bucketed_s": med["bucketed"], "per_tensor_s": med["per_tensor"], "gloo_s": med["gloo"],
        "ratio": med["per_tensor"] / med["bucketed"], "sync_fraction_of_step": med["bucketed"] / step_s,
        "step_s": step_s, "generate_s": generate_s, "train_s": train_s,
        "generated_tokens": sum(t.generated_tokens for t in trajectories),
        "all_times_s": times, "learner_precision": learners.precision, "generator_dtype": pool.described["dtype"],
        "settings": {"parameters": sum(sizes), "tensors": len(sizes), "model": cfg.model.model_dump(),
                     "bucket_mb": args.bucket_mb, "repeats": args.repeats, "samples": args.samples,
                     "tokens": args.tokens},
    }


def shapes(model: Path) -> list[list[int]]:
    """The checkpoint's tensor shapes (one per parameter the sync moves, tied ones once)."""
    from safetensors import safe_open

    out = []
    for file in sorted(model.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            out.extend(f.get_slice(k).get_shape() for k in f.keys())
    return out
