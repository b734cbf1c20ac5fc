# The two commands of the README. Each runs the (idempotent, stamp-guarded) set-up and data preparation first.
#   make demo   set-up, prepare the tree data, run the main job (tools/main_job.py)
#   make test   set-up, prepare the tree data, run the test suite
PY := .venv/bin/python
# the repository root, so that `make -f /path/to/Makefile test` from another folder works too
ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
# -p no:cacheprovider: no .pytest_cache in the tree; -ra: say why anything did not pass.
# pytest exits 5 when no tests ran; make fails on any non-zero exit, so that never counts as success.
PYTEST_FLAGS ?= -q -p no:cacheprovider -ra --durations=15

.PHONY: demo test setup data

setup:
	cd "$(ROOT)" && bash scripts/setup_env.sh

data: setup
	cd "$(ROOT)" && $(PY) tools/prepare_trees.py

demo: data
	cd "$(ROOT)" && $(PY) tools/main_job.py

test: data
	cd "$(ROOT)" && $(PY) -m pytest $(PYTEST_FLAGS) tests
