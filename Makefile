# The two commands of README's quick start:
#   make report   set up, then check every op x backend here, and benchmark (info + check + bench --quick)
#   make test     set up, then lint and run the test suite (CPU: Triton through its interpreter)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup report test gpu-test lint clean wheel device-bundle anchors

setup:
	@bash scripts/setup.sh

# Without a GPU, Triton kernels are checked (for correctness, not speed) through the interpreter.
INTERPRET = TRITON_INTERPRET=$${TRITON_INTERPRET:-$$($(BIN)/python -c "import torch; print(0 if torch.cuda.is_available() else 1)")}

report: setup
	$(INTERPRET) $(BIN)/aigc-kernels info
	$(INTERPRET) $(BIN)/aigc-kernels check
	$(BIN)/aigc-kernels bench --quick --json bench-quick.json

lint: setup
	$(BIN)/ruff check .

# Two pytest workers where pytest-xdist is installed (the dev extras): a test file stays on one worker, so its
# module fixtures (the emulator builds, the wheel) are built once. TEST_JOBS=0 runs in one process.
TEST_JOBS ?= 2
XDIST = $$($(BIN)/python -c "import xdist" 2>/dev/null && [ "$(TEST_JOBS)" != 0 ] && echo "-n $(TEST_JOBS) --dist loadfile")

test: lint
	$(INTERPRET) $(BIN)/python -m pytest $(XDIST)

# An abi3 wheel with aigc_kernels._C built against torch $(TORCH) (default: the installed one) -> dist/
wheel: setup
	TORCH=$(TORCH) bash scripts/build_wheel.sh

# Everything a GPU window needs that can be built here (_C for the GPU image's torch, anchor wheels) -> bundle/
device-bundle:
	bash scripts/device_bundle.sh

# FA2's kernels compiled here for sm_90 (cached; ~30 minutes cold on 2 cores), their SASS figures recorded in
# benchmarks/model/anchor_figures.json, then the tables beside ours (README) regenerated
anchors: setup
	$(BIN)/python scripts/anchors.py
	$(BIN)/python scripts/sass_figures.py

# On a CUDA machine: the GPU tests only.
gpu-test: setup
	$(BIN)/python -m pytest -m gpu

clean:
	rm -rf build *.egg-info aigc_kernels/_C*.so aigc_kernels/_build_info.py $(VENV)/.aigc-kernels-installed
