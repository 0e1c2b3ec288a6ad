"""The run folder of one job: what a new run writes first and what `--resume` reads back.

    <run_dir>/config.yaml        the resolved config (every default filled in)
              state.json         step, data ledger, checkpoint path and its files' manifest, MLflow run id:
                                 written last, atomically
              checkpoints/step_N Hugging Face folders (weights, tokenizer, optimizer state)
              trained.jsonl      one line per RL step: the data positions it trained, set aside and re-issued
                                 (a step redone after a crash appends again: its last line counts)
              evals.jsonl        one line per RL evaluation, appended as they happen
              evals/step_N.jsonl the trajectories of the evaluation at step N (`evals.traces` records)
              samples/step_N.jsonl some rollouts of training step N, with rewards (same records)
              view.html          the latest evaluation's trajectories as step-summary outlines (`accordion view`)
              plots/             gap curve, budgets, chosen budgets, rewards (`evals.plots`)
              report.json        the job's evaluations in one file (`evals.report`)
              sft/               the SFT cold start of the embedded default
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import yaml

from configs import ConfigError, load_config
from configs.schema import Config

STATE = "state.json"
RESOLVED_CONFIG = "config.yaml"
EVALS = "evals.jsonl"
TRAINED = "trained.jsonl"
REPORT = "report.json"
VIEW = "view.html"
PLOTS = "plots"


class RunFolderError(RuntimeError):
    """The run folder cannot take what the run writes, or holds a damaged checkpoint; the message names
    the file and what to do."""


def prepare_run(config: str | None, overrides: list[str], resume: str | None,
                check: Callable[[Config], None] = lambda cfg: None) -> tuple[Config, Path, dict | None]:
    """A new run refuses a folder that already holds one; `--resume` reads config and state from it.
    `check` may refuse the config before anything is written."""
    if resume:
        run_dir = Path(resume)
        if not (run_dir / RESOLVED_CONFIG).is_file():
            raise ConfigError(f"--resume {run_dir}: no {RESOLVED_CONFIG} there (not a run folder)")
        cfg = load_config(run_dir / RESOLVED_CONFIG, overrides)
        check(cfg)
        state = read_state(run_dir)
        if state and state.get("checkpoint_files"):  # empty: the driver does not see the learners' disk
            check_checkpoint(Path(state["checkpoint"]), state["checkpoint_files"], f"--resume {run_dir}")
        return cfg, run_dir, state
    cfg = load_config(config, overrides)
    check(cfg)
    run_dir = Path(cfg.run_dir)
    if (run_dir / RESOLVED_CONFIG).exists():
        raise ConfigError(f"run_dir {run_dir} already holds a run: continue it with --resume {run_dir}, "
                          f"or pass run_dir=<new folder>")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RESOLVED_CONFIG).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return cfg, run_dir, None


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    """The RL checkpoint of step `step` (`checkpoints/step_N` above)."""
    return run_dir / "checkpoints" / f"step_{step}"


def read_state(run_dir: Path) -> dict | None:
    """`state.json`: the last RL checkpoint's step, files and data ledger; None before the first one."""
    return json.loads((run_dir / STATE).read_text()) if (run_dir / STATE).is_file() else None


def write_json(path: Path, data: Any) -> None:
    """Write to a temporary name, then rename: a crash leaves the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


EDGE_BYTES = 1 << 20


def manifest(folder: Path) -> dict[str, list]:
    """Every file of a checkpoint folder: [size, hash of its first and last MiB]. Catches a truncated or
    torn checkpoint without reading gigabytes of optimizer state at every save."""
    files: dict[str, list] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        size = path.stat().st_size
        with open(path, "rb") as f:
            edges = hashlib.sha256(f.read(EDGE_BYTES))
            f.seek(max(size - EDGE_BYTES, 0))
            edges.update(f.read(EDGE_BYTES))
        files[path.relative_to(folder).as_posix()] = [size, edges.hexdigest()[:16]]
    return files


def check_checkpoint(folder: Path, expected: dict[str, list], who: str) -> None:
    """Refuse a checkpoint that differs from its manifest, naming the first file that does."""
    if not folder.is_dir():
        raise RunFolderError(f"{who}: the checkpoint {folder} is missing; nothing was loaded")
    found = manifest(folder)
    for name, (size, digest) in expected.items():
        problem = ("missing" if name not in found else
                   f"{found[name][0]:,} bytes, written as {size:,}" if found[name][0] != size else
                   "its contents changed" if found[name][1] != digest else "")
        if problem:
            raise RunFolderError(f"{who}: the checkpoint {folder} is damaged ({name}: {problem}); nothing was "
                                 f"loaded. Restore the folder, or start a new run from it with model.path=<a copy "
                                 f"that loads>")


def append_eval(run_dir: Path, entry: dict) -> None:
    append_line(run_dir / EVALS, entry)


def append_line(path: Path, entry: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")


def read_evals(run_dir: Path, upto: int | None = None) -> list[dict]:
    """The RL evaluations in step order; a step evaluated twice (work redone after a resume) counts once,
    its latest; with `upto`, only steps a checkpoint covers."""
    path = run_dir / EVALS
    if not path.is_file():
        return []
    latest = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            latest[entry["step"]] = entry
    return [latest[s] for s in sorted(latest) if upto is None or s <= upto]
