# One set-up for users and CI: a local .venv with the CPU build of torch when none is present.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_CPU ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test lint reproduce benchmark gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install $(TORCH_CPU)
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check ufm_torch callbacks tests benchmarks
	$(BIN)/python -m pytest -n 2 -q

lint: $(STAMP)
	$(BIN)/ruff check ufm_torch callbacks tests benchmarks

reproduce: $(STAMP)
	$(BIN)/ufm-train experiment=paper

benchmark: $(STAMP)
	$(BIN)/python -m benchmarks.bench_train_step
	$(BIN)/python -m benchmarks.bench_regularized_step
	$(BIN)/python -m benchmarks.bench_large_ufm
	$(BIN)/python -m benchmarks.bench_metrics
	$(BIN)/python -m benchmarks.bench_monitor

gpu-check: $(STAMP)
	@$(BIN)/python -c "import torch; print('CUDA device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none (the gpu tests skip, the benchmark times the CPU only)')"
	$(BIN)/python -m pytest -m gpu -q
	$(BIN)/python -m benchmarks.bench_gpu_crossover
	$(BIN)/python -m benchmarks.bench_gpu_crossover --dtype float32

clean:
	rm -rf $(VENV) outputs/runs outputs/multiruns
