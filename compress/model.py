"""The compressor model: a small BERT token classifier, built and trained locally (nothing downloaded).

Input: `<s> question </s> trace </s>` with segment ids 0 / 1; full attention lets every trace piece see the
question (what Extra-CoT gets from Longformer's global attention on it). Output, per trace piece: four
logits, "kept at 20 / 40 / 60 / 80 %"; compressing to r %, the pieces are ranked by the probability of
"kept at r", so each ratio has its own ranking (the gold levels break ties by position, which differs
between ratios) and top-k follows the labels' order. Binary keep labels (keep spans) train the four alike. The tokenizer is the built-in kind (`models.tokenizer`): one id per
piece, so trace pieces and positions align one to one. Always fp32: the model is small, and fp32 runs at
full speed on every CPU.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from compress.labels import Example
from compress.spans import RATIOS, Trace, keep_counts, measured_ratio, read_trace, render, select
from configs.schema import CompressConfig
from models.tokenizer import train_tokenizer
from tasks.dataset import epoch_order
from tasks.format import is_format_token, pieces

STATE = "training_state.json"
OPTIMIZER = "optimizer.pt"


@dataclass(frozen=True)
class Window:
    """One model input: ids, segment ids, and which trace pieces (`first` on) sit from position `offset`."""

    ids: list[int]
    types: list[int]
    first: int
    offset: int

    @property
    def count(self) -> int:
        return len(self.ids) - self.offset - 1


class Compressor:
    """A token classifier and its tokenizer; `scores` gives each trace piece its keep score."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device)

    @classmethod
    def build(cls, cfg: CompressConfig, corpus: Sequence[str]) -> Compressor:
        """A fresh model whose vocabulary is every piece of `corpus` (unknown pieces read as `<unk>`)."""
        from transformers import BertConfig, BertForTokenClassification

        tokenizer = train_tokenizer(corpus)
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                            num_attention_heads=cfg.num_heads, intermediate_size=4 * cfg.hidden_size,
                            max_position_embeddings=cfg.max_length, type_vocab_size=2,
                            pad_token_id=tokenizer.pad_token_id, num_labels=len(RATIOS))
        torch.manual_seed(cfg.seed)
        return cls(BertForTokenClassification(config), tokenizer)

    @classmethod
    def load(cls, path: str | Path) -> Compressor:
        from transformers import AutoTokenizer, BertForTokenClassification

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no compressor here (expected config.json; `accordion compress train` writes one)")
        return cls(BertForTokenClassification.from_pretrained(path), AutoTokenizer.from_pretrained(path))

    def save(self, path: Path) -> None:
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    @property
    def max_length(self) -> int:
        return self.model.config.max_position_embeddings

    def ids(self, texts: Sequence[str]) -> list[int]:
        return self.tokenizer.convert_tokens_to_ids([t.strip() if is_format_token(t) else t for t in texts])

    def windows(self, question: str, trace: Trace) -> list[Window]:
        """The question (at most a quarter of the positions, its end kept) before each stretch of the trace."""
        tok = self.tokenizer
        question_ids = self.ids([m.group() for m in pieces(question)])[-(self.max_length // 4):]
        head = [tok.bos_token_id, *question_ids, tok.eos_token_id]
        room = self.max_length - len(head) - 1
        trace_ids = self.ids(trace.pieces)
        return [Window([*head, *trace_ids[i:i + room], tok.eos_token_id], [0] * len(head) + [1] * (len(trace_ids[i:i + room]) + 1),
                       i, len(head))
                for i in range(0, len(trace_ids), room)]

    def logits(self, windows: Sequence[Window]) -> torch.Tensor:
        """`[windows, positions, 4]` logits of a padded batch."""
        width = max(len(w.ids) for w in windows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([w.ids + [pad] * (width - len(w.ids)) for w in windows], device=self.device)
        types = torch.tensor([w.types + [0] * (width - len(w.types)) for w in windows], device=self.device)
        mask = torch.tensor([[1] * len(w.ids) + [0] * (width - len(w.ids)) for w in windows], device=self.device)
        return self.model(input_ids=ids, token_type_ids=types, attention_mask=mask).logits

    @torch.no_grad()
    def scores(self, items: Sequence[tuple[str, Trace]], batch_size: int = 32,
               desc: str | None = None) -> list[dict[int, list[float]]]:
        """For each `(question, trace)`, per ratio of `RATIOS`, every piece's probability of being kept at
        that ratio (tags are scored too; `select` keeps them anyway). `desc`: show a progress bar."""
        from tqdm import tqdm

        self.model.eval()
        flat = [(k, w) for k, (question, trace) in enumerate(items) for w in self.windows(question, trace)]
        out = [torch.zeros(len(trace.pieces), len(RATIOS)) for _, trace in items]
        for i in tqdm(range(0, len(flat), batch_size), desc=desc, unit="batch", disable=desc is None, dynamic_ncols=True):
            chunk = flat[i:i + batch_size]
            keep = torch.sigmoid(self.logits([w for _, w in chunk])).cpu()
            for row, (k, w) in enumerate(chunk):
                out[k][w.first:w.first + w.count] = keep[row, w.offset:w.offset + w.count]
        return [{r: probs[:, j].tolist() for j, r in enumerate(RATIOS)} for probs in out]


def targets(example: Example, window: Window) -> tuple[list[list[float]], list[float]]:
    """Per position of `window`: the four "kept at r" targets, and whether the loss counts it (trace
    pieces that are not tags)."""
    width = len(window.ids)
    labels, mask = [[0.0] * len(RATIOS) for _ in range(width)], [0.0] * width
    for j, level in enumerate(example.levels[window.first:window.first + window.count]):
        if level is not None:
            labels[window.offset + j] = [float(level <= r) for r in RATIOS]
            mask[window.offset + j] = 1.0
    return labels, mask


def train(compressor: Compressor, cfg: CompressConfig, examples: list[Example], held_out: list[Example], out: Path,
          log: Callable[[dict[str, float], int], None], record: dict[str, Any]) -> dict[str, Any]:
    """Train for `cfg.epochs`, resuming from `out` when it holds a checkpoint; returns the final state (with
    the held-out figures of `evaluate`). `record` is stored in every checkpoint (e.g. the MLflow run id)."""
    from tqdm import tqdm

    windows = [(e, w) for e in examples for w in compressor.windows(e.question, e.trace)]
    per_epoch = math.ceil(len(windows) / cfg.batch_size)
    total = cfg.epochs * per_epoch
    optimizer = torch.optim.AdamW(compressor.model.parameters(), lr=cfg.lr, weight_decay=0.01)
    state = {"step": 0, **record}
    if (out / STATE).is_file():
        state = {**state, **json.loads((out / STATE).read_text())}
        optimizer.load_state_dict(torch.load(out / OPTIMIZER))
    warmup = max(1, per_epoch // 2)
    with tqdm(total=total, initial=state["step"], desc="compressor (fp32)", unit="step", dynamic_ncols=True) as bar:
        for step in range(state["step"], total):
            compressor.model.train()
            epoch, k = divmod(step, per_epoch)
            order = epoch_order(cfg.seed, epoch, len(windows))[k * cfg.batch_size:(k + 1) * cfg.batch_size]
            batch = [windows[i] for i in order]
            logits = compressor.logits([w for _, w in batch])
            labels, masks = zip(*(targets(e, w) for e, w in batch))
            width = logits.shape[1]
            label = torch.tensor([l + [[0.0] * len(RATIOS)] * (width - len(l)) for l in labels], device=logits.device)
            mask = torch.tensor([m + [0.0] * (width - len(m)) for m in masks], device=logits.device)
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, label, reduction="none").mean(-1)
                    * mask).sum() / mask.sum()
            lr = cfg.lr * min(1.0, (step + 1) / warmup) * (1 - step / total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(compressor.model.parameters(), 1.0)
            optimizer.step()
            metrics = {"train/loss": loss.item(), "train/lr": lr, "train/epoch": step / per_epoch}
            done = step + 1
            if done % per_epoch == 0 or done == total:
                figures = evaluate(compressor, held_out)
                metrics |= {f"eval/f1_{r}": f for r, f in figures["f1"].items()}
                metrics |= {"eval/within_band": figures["within_band"], "eval/parse_ok": figures["parse_ok"]}
                state["eval"] = figures
            log(metrics, done)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            bar.update(1)
            if done % cfg.save_every == 0 or done == total:
                state["step"] = done
                save(compressor, optimizer, out, state)
    return state


def save(compressor: Compressor, optimizer, out: Path, state: dict[str, Any]) -> None:
    """Model, tokenizer, optimizer and state, the state last: a checkpoint counts only once it is whole."""
    out.mkdir(parents=True, exist_ok=True)
    compressor.save(out)
    torch.save(optimizer.state_dict(), out / OPTIMIZER)
    tmp = out / f"{STATE}.tmp"
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.replace(out / STATE)


def evaluate(compressor: Compressor, examples: list[Example], band: float = 0.05, desc: str | None = None) -> dict[str, Any]:
    """Against labelled examples, at each ratio: keep F1 over all counted pieces (micro), the fraction of
    compressed traces within `band` of the target ratio, and the fraction that still parse as step traces."""
    scores = compressor.scores([(e.question, e.trace) for e in examples], desc=desc)
    counts = {r: [0, 0, 0] for r in RATIOS}
    within = parsed = 0
    for example, score in zip(examples, scores):
        for r in RATIOS:
            keep = select(example.trace, score[r], r)
            for j, n in enumerate(keep_counts(keep, example.gold_keep(r), example.trace)):
                counts[r][j] += n
            try:
                within += abs(measured_ratio(example.trace, render(example.trace, keep, r)) - r / 100) <= band
                parsed += 1
            except ValueError:
                pass
    n = len(examples) * len(RATIOS)
    return {"f1": {str(r): 2 * both / (p + g) if p + g else 1.0 for r, (both, p, g) in counts.items()},
            "within_band": within / n, "parse_ok": parsed / n, "traces": len(examples)}


def compress_records(compressor: Compressor, records: list[dict], ratios: Sequence[int], band: float,
                     batch_size: int = 32) -> tuple[list[dict], dict[int, list[int]]]:
    """Each step-trace record at 100 % (tagged `<COMP_100>`) and at every ratio, the compressed ones kept
    only within `band` of their target; returns the records and, per ratio, [kept, dropped]."""
    traces = [read_trace(r["response"]) for r in records]
    scores = compressor.scores([(r["question"], t) for r, t in zip(records, traces)], batch_size, desc="compressing")
    out, tally = [], {r: [0, 0] for r in ratios}
    for record, trace, score in zip(records, traces, scores):
        base = {k: record[k] for k in ("question", "answer", "source")}
        out.append({**base, "response": render(trace, [True] * len(trace.pieces), 100), "budget": 100, "ratio": 1.0})
        for r in ratios:
            compressed = render(trace, select(trace, score[r], r), r)
            measured = measured_ratio(trace, compressed)
            ok = abs(measured - r / 100) <= band
            tally[r][0 if ok else 1] += 1
            if ok:
                out.append({**base, "response": compressed, "budget": r, "ratio": round(measured, 4)})
    return out, tally
