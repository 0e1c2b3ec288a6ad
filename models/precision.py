"""Which floating-point precision this machine runs fast, and how to name the machine beside a figure.

bf16 halves memory traffic where the hardware multiplies bf16 natively (GPUs; CPUs with AVX512-BF16
or AMX). Elsewhere torch falls back to a generic bf16 GEMM: on a 2-core AVX2 EPYC the tiny model's
SFT step took 38-43 s in bf16 against 4.4 s in fp32. `auto` therefore means bf16 only where it is
native. It is resolved in the process that computes (a learner rank, a generator), since on a
cluster the driver's machine is not theirs.
"""
from __future__ import annotations

import functools
from typing import Literal

Precision = Literal["bf16", "fp32"]
ENGINE_DTYPE: dict[str, str] = {"bf16": "bfloat16", "fp32": "float32"}


@functools.cache
def native_bf16() -> bool:
    """True on a GPU with bf16 support, or a CPU with AVX512-BF16 or AMX tiles."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def learner_precision(requested: str) -> Precision:
    """`learner.precision` (`auto`, `bf16`, `fp32`) as the precision to train in."""
    if requested == "auto":
        return "bf16" if native_bf16() else "fp32"
    return requested  # type: ignore[return-value]


def engine_dtype(requested: str) -> str:
    """`generator.dtype` as a vLLM dtype; `auto` follows the same rule as the learner (not vLLM's
    own `auto`, which copies the checkpoint's dtype whatever the hardware)."""
    return ENGINE_DTYPE[learner_precision("auto")] if requested == "auto" else requested


@functools.cache
def machine() -> str:
    """One line naming the hardware figures were measured on, e.g.
    `AMD EPYC, 2 cores, torch AVX512, bf16 native` or `NVIDIA H200 x1`."""
    import os

    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    name = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0))
    native = "bf16 native" if native_bf16() else "no native bf16"
    return f"{name}, {cores} cores, torch {torch.backends.cpu.get_cpu_capability()}, {native}"
