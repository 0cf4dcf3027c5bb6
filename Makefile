# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv from requirements.txt
# the first time (or when requirements.txt changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench gpu gpu-check clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m landmark_kit.demo --workdir runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_scoring.py

# GPU boxes: faiss's CUDA 12 build in place of faiss-cpu (requirements-gpu.txt), then every GPU figure in one run.
gpu: $(STAMP)
	$(PY) -m pip uninstall --quiet -y faiss-cpu
	$(PY) -m pip install --quiet -r requirements-gpu.txt

gpu-check: gpu
	$(PY) benchmarks/gpu_check.py --record

clean:
	rm -rf runs .pytest_cache
