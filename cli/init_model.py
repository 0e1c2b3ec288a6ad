"""`accordion init-model`: build the tiny built-in model (size from the `model` config section)."""
from __future__ import annotations

import argparse

from configs import add_config_arguments, config_from_args


def main(argv: list[str], prog: str) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--out", required=True, help="folder to write the model and tokenizer into")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(args)

    from transformers import AutoModelForCausalLM

    from models.build import build_tiny_model

    out = build_tiny_model(cfg.model, args.out)
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(out).parameters())
    print(f"wrote {out}: Qwen3 decoder, {params / 1e6:.2f} M parameters")
    return 0
