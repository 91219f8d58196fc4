# The two commands of the README. Each sets up .venv on first use (scripts/setup_env.sh is idempotent).
.PHONY: setup demo test bench

setup:
	@scripts/setup_env.sh

demo: setup
	@.venv/bin/python -m vpr_ros.demo $(ARGS)

test: setup
	@.venv/bin/python -m pytest test -q $(ARGS)

bench: setup
	@for b in bench/*.py; do echo "== $$b"; .venv/bin/python $$b || exit 1; done
