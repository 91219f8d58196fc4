# The two commands of the README. Each sets up .venv on first use (scripts/setup_env.sh is idempotent).
.PHONY: setup setup-gpu demo test bench

setup:
	@scripts/setup_env.sh

# On a machine with an NVIDIA GPU: setup, then requirements-gpu.txt in place of onnxruntime and faiss-cpu.
setup-gpu:
	@VPR_GPU=1 scripts/setup_env.sh

demo: setup
	@.venv/bin/python -m vpr_ros.demo $(ARGS)

# Four workers on two cores: most slow tests wait on other processes (node start-up, DDS discovery,
# a bag played in real time). A module stays on one worker (its module fixtures are built once).
TEST_WORKERS ?= 4

test: setup
	@.venv/bin/python -m pytest test -q -n $(TEST_WORKERS) --dist loadscope $(ARGS)

# bench/gpu_check.py exits 2 on a machine without a CUDA GPU: nothing to measure there, not a failure.
bench: setup
	@for b in bench/*.py; do echo "== $$b"; .venv/bin/python $$b; rc=$$?; \
		[ $$rc = 0 ] || { [ $$b = bench/gpu_check.py ] && [ $$rc = 2 ]; } || exit 1; done
