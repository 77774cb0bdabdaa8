# The README's two commands: `make pipeline` (set up, compile the pipeline) and `make test`
# (set up, run every test). Both create .venv on first use and reuse it afterwards.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: setup pipeline local test lint format clean images lock
IMAGE_ARGS ?=

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# The Kubernetes platform proto of the oldest KFP backend we compile for, on its own (it pins an
# older kfp): the compile tests parse every executor's Kubernetes config strictly against it.
OLDEST_BACKEND := $(VENV)/oldest-backend
$(OLDEST_BACKEND)/.installed: tests/oldest-backend.txt $(STAMP)
	rm -rf $(OLDEST_BACKEND)
	$(BIN)/python -m pip install --quiet --no-deps --target $(OLDEST_BACKEND) -r $<
	touch $@

setup: $(STAMP) $(OLDEST_BACKEND)/.installed

pipeline: $(STAMP)  ## write mnist_pipeline.yaml, ready to upload in the Kubeflow UI
	$(BIN)/python pipelines/mnist.py --compile

local: $(STAMP)  ## run the whole pipeline on this machine (kfp.local)
	$(BIN)/python pipelines/mnist.py --local

# `make images IMAGE_REGISTRY=registry.example.com/ml PUSH=1` builds both images for that registry
# and pushes them (printing each one's digest); compile with the same --image-registry.
# The registry reaches build.py through the environment, so the shell passes it as one word,
# whatever it holds, and build.py judges it.
IMAGE_REGISTRY ?=
export IMAGE_REGISTRY
PUSH ?=
images: $(STAMP)  ## build the container images with Docker (IMAGE_ARGS=--local-base where no registry is reachable)
	$(BIN)/python images/build.py $(if $(IMAGE_REGISTRY),--image-registry "$$IMAGE_REGISTRY") \
		$(if $(filter 1 yes true,$(PUSH)),--push) $(IMAGE_ARGS)

lock: $(STAMP)  ## regenerate images/*/requirements.txt from pyproject.toml (Python 3.11)
	$(BIN)/python images/lock.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint $(OLDEST_BACKEND)/.installed
	$(BIN)/pytest

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
