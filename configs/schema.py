"""Typed configuration: one frozen section per role, every field documented and bounded.

A YAML file under `configs/` sets only what differs from these defaults. Each actor receives
only its own section, never the whole tree.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    """Base of every config section: immutable, and an unknown key is an error, not a silent no-op."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ModelConfig(Section):
    """The policy model. `path` names a Hugging Face folder; empty means the built-in tiny model."""

    path: str = ""
    """Folder with a saved causal LM and tokenizer. Empty: build the tiny model into the run folder."""
    hidden_size: int = Field(256, ge=32, le=4096)
    """Tiny model only: width of the residual stream."""
    num_layers: int = Field(4, ge=1, le=48)
    """Tiny model only: number of decoder layers."""
    num_heads: int = Field(4, ge=1, le=64)
    """Tiny model only: attention heads (hidden_size must divide evenly)."""
    num_kv_heads: int = Field(4, ge=1, le=64)
    """Tiny model only: key/value heads for grouped-query attention."""
    intermediate_size: int = Field(768, ge=32, le=16384)
    """Tiny model only: width of the MLP."""
    max_position_embeddings: int = Field(2048, ge=128, le=131072)
    """Tiny model only: longest sequence (prompt + response) the model can address."""
    seed: int = 0
    """Seed of the random initialisation."""

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        return self


class TaskConfig(Section):
    """The training data: the built-in arithmetic task or one of the real benchmark sets."""

    name: Literal["arithmetic", "math500", "gsm8k", "aime24", "amc23"] = "arithmetic"
    """`arithmetic` is generated on the fly; the others are read from `data_dir`."""
    data_dir: str = "../shared/data"
    """Folder holding the benchmark JSONL files (relative paths are from the working directory)."""
    min_steps: int = Field(2, ge=1, le=12)
    """Arithmetic: fewest operations per problem."""
    max_steps: int = Field(6, ge=1, le=12)
    """Arithmetic: most operations per problem."""
    max_operand: int = Field(9, ge=1, le=99)
    """Arithmetic: operands are drawn from 1..max_operand."""
    lax_fraction: float = Field(0.0, ge=0.0, le=1.0)
    """Arithmetic: fraction of gold step summaries that drop the running state (Fold then fails)."""
    train_size: int = Field(20000, ge=1)
    """Arithmetic: problems in the training split."""
    eval_size: int = Field(200, ge=1)
    """Problems in the held-out split."""
    seed: int = 0
    """Seed of the problem generator; the held-out split uses a disjoint stream."""

    @model_validator(mode="after")
    def _step_range(self) -> TaskConfig:
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps {self.min_steps} is larger than max_steps {self.max_steps}")
        return self


class ClusterConfig(Section):
    """Placement: how many actors of each role, and what each one reserves."""

    generators: int = Field(1, ge=1)
    """vLLM generator actors (one engine each)."""
    generator_cpus: float = Field(1.0, ge=0.0)
    generator_gpus: float = Field(0.0, ge=0.0)
    learners: int = Field(2, ge=1)
    """DeepSpeed ranks (one actor each)."""
    learner_cpus: float = Field(0.5, ge=0.0)
    learner_gpus: float = Field(0.0, ge=0.0)
    reward_workers: int = Field(1, ge=1)
    reward_cpus: float = Field(0.0, ge=0.0)
    """Reward scoring is light; 0 lets the workers share cores with the other roles."""
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """Ray placement-group strategy for each role's bundles."""
    placement_timeout_s: float = Field(120.0, gt=0.0)
    """How long to wait for the placement groups before giving up."""


class TrackingConfig(Section):
    """MLflow experiment tracking."""

    uri: str = ""
    """Tracking URI. Empty: $MLFLOW_TRACKING_URI, else sqlite:///<run_dir>/mlflow.db."""
    experiment: str = "accordion-rl"
    run_name: str = ""
    """Display name of the MLflow run; empty lets MLflow pick one."""


class Config(Section):
    """The whole job. Sections are added per role; each role reads only its own."""

    run_dir: str = "runs/local"
    """Where checkpoints, metrics and the MLflow store of this job go."""
    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()
    cluster: ClusterConfig = ClusterConfig()
    tracking: TrackingConfig = TrackingConfig()
