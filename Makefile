# hpcsur — two commands set everything up on a fresh machine:
#   make demo   bootstrap .venv/ and run the main job end to end
#   make test   bootstrap .venv/, start what the tests need, run pytest, stop it again
SHELL      := /bin/bash
PYTHON     ?= python3.11
VENV       := .venv
PY         := $(VENV)/bin/python
PIP        := $(PY) -m pip --disable-pip-version-check -q
# The stamp changes whenever the declared dependencies change, so re-running is a no-op otherwise.
STAMP      := $(VENV)/.bootstrapped-$(shell cat setup.cfg pyproject.toml | sha1sum | cut -c1-12)
export NUMBA_CACHE_DIR := $(CURDIR)/.venv/numba-cache

.PHONY: venv demo test bench clean horovod

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (hpcsur needs Python 3.11)"; exit 1; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	@echo "bootstrap: torch==2.13.0 first (pinned CPU build), then hpcsur and its extras"
	@$(PIP) install torch==2.13.0
	@$(PIP) install -e '.[test,reference]'
	@rm -f $(VENV)/.bootstrapped-* && touch $@
	@echo "bootstrap: done ($(VENV))"

demo: venv
	@$(PY) -m hpcsur.cli.main demo $(if $(FRESH),--fresh)

# The local Slurm cluster (slurm/local: munged, slurmctld, slurmd; installed with apt when missing)
# runs for the tests marked slurm. It is started first and stopped by the EXIT trap, so also when
# tests fail or the run is interrupted; the lease (this shell's PID) keeps it up while another
# `make test` on the machine still uses it. Where it cannot start, those tests skip with the reason.
test: venv horovod
	@slurm/local/start.sh --lease $$$$ || echo "make test: the local Slurm cluster did not start; tests marked slurm will skip"; \
	trap 'slurm/local/stop.sh --lease $$$$' EXIT; \
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

# Horovod 0.28.1 patched to C++17 and built against this venv's torch + MPICH; the wheel is cached
# under ~/.cache/hpcsur/wheels/<key>/ (first build ~5 min, later runs seconds).
horovod: venv
	@$(PY) tools/build_horovod.py

bench: venv
	@for b in benchmarks/*.py; do echo "== $$b"; LD_LIBRARY_PATH=$(CURDIR)/$(VENV)/lib $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
