# One set-up for users and CI: a local .venv with the CPU build of torch when none is present.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_CPU ?= torch==2.13.0
STAMP := $(VENV)/.installed
# A second environment for the tests that need torchvision (ResNet-18, MNIST, CIFAR-10): torchvision does not
# import next to the CPU torch above, so .venv-vision gets a matching torch/torchvision pair of its own.
VISION_VENV ?= .venv-vision
VISION_BIN := $(VISION_VENV)/bin
TORCH_VISION ?= torch==2.14.1 torchvision==0.29.1
VISION_STAMP := $(VISION_VENV)/.installed

.PHONY: install test test-slow test-vision lint reproduce benchmark tensorboard gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install $(TORCH_CPU)
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Every test but the slow and the vision ones (at most 3 minutes on 2 cores); test-slow and test-vision run the rest.
test: $(STAMP)
	$(BIN)/ruff check ufm_torch callbacks tests benchmarks
	$(BIN)/python -m pytest -n 2 -q -m "not vision and not slow"

# The slow tests that need no torchvision: sweeps, DDP, killed and resumed runs, the paper run.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -m "slow and not vision"

$(VISION_BIN)/python:
	$(PYTHON) -m venv $(VISION_VENV)

$(VISION_STAMP): $(VISION_BIN)/python pyproject.toml
	$(VISION_BIN)/pip install $(TORCH_VISION)
	$(VISION_BIN)/pip install -e ".[dev,vision]"
	touch $(VISION_STAMP)

# The vision-marked tests; importing torchvision first makes a broken pair fail here instead of skipping the tests.
test-vision: $(VISION_STAMP)
	$(VISION_BIN)/python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	$(VISION_BIN)/python -m pytest -n 2 -q -m vision

lint: $(STAMP)
	$(BIN)/ruff check ufm_torch callbacks tests benchmarks

reproduce: $(STAMP)
	$(BIN)/ufm-train experiment=paper

benchmark: $(STAMP)
	$(BIN)/python -m benchmarks.bench_train_step
	$(BIN)/python -m benchmarks.bench_regularized_step
	$(BIN)/python -m benchmarks.bench_regularized_experiment
	$(BIN)/python -m benchmarks.bench_large_ufm
	$(BIN)/python -m benchmarks.bench_metrics
	$(BIN)/python -m benchmarks.bench_monitor
	$(BIN)/python -m benchmarks.bench_layer_metrics
	$(BIN)/python -m benchmarks.bench_layer_monitor
	$(BIN)/python -m benchmarks.bench_rejected_config
	$(BIN)/python -m benchmarks.bench_hyperspherical

# TensorBoard on one run or sweep folder: make tensorboard RUN=outputs/runs/<date>/<time>
tensorboard: $(STAMP)
	@test -n "$(RUN)" || { echo "make tensorboard: set RUN to a run or sweep folder, e.g. RUN=outputs/runs/<date>/<time>"; exit 2; }
	@$(BIN)/python -m ufm_torch.run_folder.dashboard "$(RUN)"
	$(BIN)/tensorboard --logdir "$(RUN)"

# On a GPU machine: the CUDA build of torch lives in .venv-vision (.venv holds the CPU build), so the gpu tests and
# the crossover benchmark run there.
gpu-check: $(VISION_STAMP)
	@$(VISION_BIN)/python -c "import torch; print('CUDA device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none (the gpu tests skip, the benchmark times the CPU only)')"
	$(VISION_BIN)/python -m pytest -m gpu -q
	$(VISION_BIN)/python -m benchmarks.bench_gpu_crossover
	$(VISION_BIN)/python -m benchmarks.bench_gpu_crossover --dtype float32
	$(VISION_BIN)/python -m benchmarks.bench_spherical_step --device cuda

clean:
	rm -rf $(VENV) $(VISION_VENV) outputs/runs outputs/multiruns
