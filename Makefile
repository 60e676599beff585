# Two commands do all set-up: `make demo` and `make test`.
# torch==2.13.0 goes in first so that transformer-lens finds its torch pin
# satisfied and does not pull several GB of CUDA wheels. The ray extra (about 350 MB)
# is installed so that the tests run the Ray sweep backend too; the package does not need it.
# The kernels extra (ninja) lets the tests build the opt-in model.kernels=cpp C++ kernels.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test test-fast bench clean-venv

$(BIN)/hyenalens: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q -e ".[dev,ray,kernels]"
	touch $@

demo: $(BIN)/hyenalens
	$(BIN)/hyenalens demo

test: $(BIN)/hyenalens
	$(BIN)/python -m pytest -q

test-fast: $(BIN)/hyenalens
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(BIN)/hyenalens
	$(BIN)/python -m benchmarks

clean-venv:
	rm -rf $(VENV)
