# ops-hpc: the Makefile only bootstraps .venv and names the jobs; lib/tasks.py and bin/ do the work.
# Windows: `py -m venv .venv && .venv\Scripts\pip install -r requirements.txt -c requirements.lock`
# (Python 3.10: -c requirements-py310.lock), then `.venv\Scripts\ops-hpc --help` (or invoke --list)
# gives the same jobs.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python
INVOKE := $(BIN)/invoke
# uv installs the pinned set in seconds from its cache (pip takes over a minute); pip is the fallback.
# --compile-bytecode: pip writes .pyc files at install, uv only when asked; without them every command
# compiled its imports again (0.3 s each; every time where PYTHONDONTWRITEBYTECODE is set, as on CI).
UV_VERSION := 0.13.8
# Python 3.10 resolves to older releases of a few packages: it has its own lock.
LOCK := $(shell $(if $(wildcard $(PYTHON)),$(PYTHON),$(PY)) -c 'import sys; print("requirements-py310.lock" if sys.version_info < (3, 11) else "requirements.lock")')
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml $(LOCK) | cksum | cut -d' ' -f1)

BATCH ?= batches/example.txt
JOBS ?= batches/jobs.txt
DIR ?= results
INTERVAL ?= 60
MINUTES ?= 30
NAME ?=
RUN ?=

.PHONY: help venv lock lint test demo localcloud-up localcloud-down localcloud-status \
	build run run-staged stage pull watch verify status setup cleanup sweep log runs monitor config \
	extend abort emergency delete-vm stop-vm bench-pull bench-pull-scale bench-runs bench-pack bench report-shot check-platforms sizes

help:  ## list the jobs
	@grep -E '^[a-z-]+:.*## ' Makefile | sed -E 's/:.*## /\t/' | expand -t 20

$(STAMP): requirements.txt pyproject.toml $(LOCK)
	@test -x $(PYTHON) || $(PY) -m venv $(VENV)
	@echo "installing ops-hpc with its local and dev extras, pinned by $(LOCK), into $(VENV) ..."
	@$(PYTHON) -m pip install -q --disable-pip-version-check uv==$(UV_VERSION) \
	  && $(BIN)/uv pip install -q --compile-bytecode --python $(PYTHON) -r requirements.txt -c $(LOCK) \
	  || $(PYTHON) -m pip install -q --disable-pip-version-check -r requirements.txt -c $(LOCK)
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)  ## create .venv: ops-hpc (editable) with the [local,dev] extras, pinned by the lock

lock: venv  ## regenerate this Python's lock file from the current .venv
	@(echo '# Full resolved set from `pip freeze` (constraints for `make venv`). Regenerate with `make lock`.'; \
	  $(PYTHON) -m pip freeze --exclude-editable | $(PYTHON) .ci/lock_markers.py) > $(LOCK)

lint: venv  ## ruff check, and mypy on lib/ (settings in pyproject.toml)
	$(BIN)/ruff check . && $(BIN)/mypy

test: lint  ## lint, then the whole test suite on the local cloud
	$(PYTHON) -m pytest -q -n 6 --dist load --maxschedchunk 1   # six workers, each with its own local cloud; long tests first (tests/conftest.py)

demo: venv  ## the whole run-staged pipeline on the local cloud with real OpenSees
	$(INVOKE) demo

localcloud-up: venv  ## start the local cloud
	$(PYTHON) bin/localcloud up
localcloud-down: venv  ## stop the local cloud and everything it started
	$(PYTHON) bin/localcloud down
localcloud-status: venv  ## what the local cloud runs
	$(PYTHON) bin/localcloud status

build: venv  ## build the opensees-hpc image
	$(INVOKE) build
run: venv  ## run JOBS over ssh with deadlines
	$(INVOKE) run.jobs --jobs $(JOBS)
run-staged: venv  ## stage BATCH, launch self-deleting VM(s) (WAIT=1 follow+pull, RERUN=RUN, MACHINE=T|auto, DRY_RUN=1 plan+cost, YES=1, RETRIES=N)
	$(INVOKE) run-staged --batch $(BATCH) $(if $(WAIT),--wait) $(if $(VMS),--vms $(VMS)) $(if $(SPOT),--spot) $(if $(RERUN),--rerun $(RERUN)) $(if $(MACHINE),--machine-type $(MACHINE)) $(if $(DRY_RUN),--dry-run) $(if $(JSON),--json) $(if $(YES),--yes) $(if $(RETRIES),--retries $(RETRIES))
stage: venv  ## zip and upload BATCH's models
	$(PYTHON) bin/stage $(BATCH)
pull: venv  ## download, verify and clean every result set into DIR (LIST=1 only lists, SET=ID one set)
	$(PYTHON) bin/pull $(if $(LIST),--list,--yes) $(if $(SET),--set $(SET)) --dir $(DIR)
watch: venv  ## keep pulling every INTERVAL seconds until Ctrl+C
	$(PYTHON) bin/pull --yes --watch --interval $(INTERVAL) --dir $(DIR)
verify: venv  ## re-check DIR against GCS or the manifests
	$(PYTHON) bin/verify --dir $(DIR)
status: venv  ## image, VMs, bucket and costs (USAGE=1 30 days per VM and run, JSON=1 or CSV=1)
	$(INVOKE) status $(if $(USAGE),--usage) $(if $(JSON),--json) $(if $(CSV),--csv)
setup: venv  ## check credentials, APIs, bucket, permissions and quota
	$(INVOKE) setup
cleanup: venv  ## delete every ops-hpc VM and wipe the bucket (asks first)
	$(INVOKE) cleanup
sweep: venv  ## delete overdue or stopped ops-hpc VMs now
	$(PYTHON) bin/sweep
log: venv  ## progress and log tail of RUN (default: latest); FOLLOW=1 follows it live (MODEL=name: one model)
	$(INVOKE) log $(if $(RUN),--run-id $(RUN)) $(if $(FOLLOW),--follow) $(if $(MODEL),--model $(MODEL))
runs: venv  ## every run, newest first: VMs, models, duration, cost, results (SINCE=7d LIMIT=N JSON=1)
	$(PYTHON) bin/runs $(if $(SINCE),--since $(SINCE)) $(if $(LIMIT),--limit $(LIMIT)) $(if $(JSON),--json)
monitor: venv  ## CPU, memory, disk of VM NAME
	$(INVOKE) monitor --name $(NAME)
extend: venv  ## give the running job MINUTES more
	$(INVOKE) extend --minutes $(MINUTES)
abort: venv  ## kill OpenSees on VM NAME; the VM stays
	$(INVOKE) abort --name $(NAME)
emergency: venv  ## push whatever is on VM NAME's disk to the bucket now
	$(INVOKE) emergency --name $(NAME)
delete-vm: venv  ## delete VM NAME now
	$(INVOKE) delete-vm --name $(NAME)
stop-vm: delete-vm  ## the older name of delete-vm
config: venv  ## every effective setting and where it came from
	$(INVOKE) config

check-platforms: venv  ## a wheel of ops-hpc resolves to wheels on Windows, macOS, Linux for Python 3.10-3.13 (needs PyPI)
	$(PYTHON) .ci/check_platforms.py
sizes: venv  ## install the wheel without extras into a fresh venv and measure it, and the dev .venv (needs PyPI)
	$(PYTHON) .ci/sizes.py
report-shot: venv  ## rebuild the newest run's report in DIR, check it in headless Chromium, save DIR/report-shot.png
	$(PYTHON) bin/report --dir $(DIR) --screenshot $(DIR)/report-shot.png

bench-pull: venv  ## benchmark bin/pull against gcloud storage rsync (not part of make test)
	$(PYTHON) -m pytest -q -s tests/bench/bench_pull.py

bench-pack: venv  ## benchmark: VM-core utilization of 16 packed one-core models on an 8-vCPU VM, and on 2 VMs (not part of make test)
	$(PYTHON) -m pytest -q -s tests/bench/bench_pack.py

bench-pull-scale: venv  ## benchmark: pull's time per result set at 1,000 and at 10,000 sets (not part of make test)
	$(PYTHON) -m pytest -q -s tests/bench/bench_pull_scale.py

bench-runs: venv  ## benchmark: `ops-hpc runs` listing 40 runs from the bucket (not part of make test)
	$(PYTHON) -m pytest -q -s tests/bench/bench_runs.py

bench: bench-pull
