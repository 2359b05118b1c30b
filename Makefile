# Two set-up commands: `make demo` (main job) and `make test` (test suite).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install system-data clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: 2.13.0 is the local CPU wheel; an open range would pull a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q torch==2.13.0 -e ".[test,bench,docs]"
	touch $(STAMP)

install: $(STAMP) system-data

# Fashion-MNIST ships as a Debian package; install it when we can (root + apt), else say how.
system-data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null)) || \
	    echo "note: could not install dataset-fashion-mnist; Fashion-MNIST tests will be skipped"; \
	  else echo "note: run 'sudo apt-get install dataset-fashion-mnist' for Fashion-MNIST"; fi; \
	fi

demo: install
	$(VENV)/bin/behemoth demo --overwrite

test: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
