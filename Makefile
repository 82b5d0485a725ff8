# The two commands of the README. Each does its own set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

VISION  := .venv-vision
VPY     := $(VISION)/bin/python
VSTAMP  := $(VISION)/.installed

.PHONY: demo test test-fast lint clean vision vision-env readme

$(STAMP): pyproject.toml scripts/install_torch.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	bash scripts/install_torch.sh $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/distillprune demo

# Run the demo and rewrite the README's (and docs/benchmarks.md's) figures from its report, and the test counts
readme: $(STAMP)
	$(PY) scripts/readme.py --run

test: $(STAMP)
	$(PY) -m pytest -q

# The fast tier: unit, contract and hostile-input tests that start no subprocess, torchrun job or browser,
# without the `slow`-marked ones (a whole pipeline, a planner search). CI runs `make test`, the full suite.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests/unit tests/contract tests/hostile

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy src

# The optional torchvision/timm venv (not needed by `make test` or CI): torch and torchvision as one matched
# pair (scripts/install_torch.sh), then the package with its [vision] extra pinned to that pair, so pip can
# never swap the torch build underneath.
$(VSTAMP): pyproject.toml scripts/install_torch.sh
	test -x $(VPY) || $(PYTHON) -m venv $(VISION)
	$(VPY) -m pip install -q --upgrade pip
	bash scripts/install_torch.sh $(VPY) vision
	$(VPY) -c "from importlib.metadata import version as v; print(f'torch=={v(\"torch\")}\ntorchvision=={v(\"torchvision\")}')" > $(VISION)/pins.txt
	$(VPY) -m pip install -q -e '.[vision,dev]' -c $(VISION)/pins.txt
	touch $(VSTAMP)

vision-env: $(VSTAMP)

vision: $(VSTAMP)
	$(VPY) -m pytest -q -m vision

clean:
	rm -rf $(VENV) $(VISION) runs .pytest_cache
