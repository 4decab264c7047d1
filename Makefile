# shop services: see README.md. `make up` alone brings a fresh clone all the way up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN := .run
MANAGE := $(BIN)/python scripts/manage.py
SUPERVISORCTL := $(BIN)/supervisorctl -c $(RUN)/supervisord.conf
SEED_CUSTOMERS ?= 100
SEED_PRODUCTS ?= 100
PYTEST_ARGS ?=
LATENCY_PNG ?= docs/latency-fixed-rate.png
LATENCY_RESULT ?=
PLOT_MATPLOTLIB ?= matplotlib==3.10.8

.PHONY: build services setup migrate up down restart ps logs seed test test-faults lint coverage lock shell bench bench-check bench-overload bench-scaling profile cluster-up cluster-down cluster-status replica-up replica-down replica-status token upgrade bench-latency bench-latency-plot backup-up backup-down backup restore backup-status alerts-check

build: $(BIN)/.installed  ## virtualenv with the pinned dependencies

$(BIN)/.installed: requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	touch $@

services:  ## PostgreSQL and RabbitMQ answering (started when installed here)
	@bash scripts/backing-services.sh

setup: build services  ## create the three roles and databases (each owned by its role)
	$(MANAGE) setup

migrate: setup  ## alembic upgrade head for each service
	$(MANAGE) migrate

up: migrate  ## start every service and the gateways under supervisord
	@$(MANAGE) supervisor-conf >/dev/null
	@if $(SUPERVISORCTL) pid >/dev/null 2>&1; then \
		echo "supervisord already running: updating"; $(SUPERVISORCTL) update; \
	else $(BIN)/supervisord -c $(RUN)/supervisord.conf; fi
	@$(MANAGE) wait --timeout 120 || { $(SUPERVISORCTL) status; exit 1; }
	@$(SUPERVISORCTL) status

down:  ## stop everything `make up` started
	@if [ -S $(RUN)/supervisor.sock ] && $(SUPERVISORCTL) pid >/dev/null 2>&1; then \
		pid=$$($(SUPERVISORCTL) pid); $(SUPERVISORCTL) shutdown; \
		while kill -0 $$pid 2>/dev/null; do sleep 0.2; done; echo "stopped"; \
	else echo "nothing running"; fi

restart: down up

upgrade: build  ## rolling upgrade of the running stack to this code: expand migrations, then each process restarted in turn (orders, products, customers, gateways), each waited for until ready
	@$(MANAGE) upgrade --run-dir $(RUN)

ps:  ## process status, and each process's HTTP address (probes, metrics)
	@$(SUPERVISORCTL) status || true
	@$(MANAGE) ports

logs:  ## follow every process's log
	tail -n 20 -F $(RUN)/logs/*.log $(RUN)/logs/*.out

seed: migrate  ## fake data: make seed SEED_CUSTOMERS=10000 SEED_PRODUCTS=100000
	$(MANAGE) seed --customers $(SEED_CUSTOMERS) --products $(SEED_PRODUCTS)

bench:  ## load benchmark of the running stack (`make up` first): BENCH_DURATION=10 BENCH_CONNECTIONS=50; BENCH_PROFILE=quick: 4 scenarios in under a minute
	@test -x $(BIN)/python || { echo "bench: no $(VENV): run \`make up\` first" >&2; exit 3; }
	@bash bench/ensure-wrk.sh
	@$(BIN)/python bench/run.py

bench-check:  ## offline self-check of bench/ (imports every module; no stack, no load)
	@test -x $(BIN)/python || { echo "bench: no $(VENV): run \`make build\` first" >&2; exit 3; }
	@$(BIN)/python bench/selfcheck.py

bench-overload:  ## orders at 1x-16x the connections served, reads alongside: goodput, sheds, p50/p99 of admitted (`make up` first): BENCH_OVERLOAD_LEVELS=1,2,4,8,16
	@test -x $(BIN)/python || { echo "bench: no $(VENV): run \`make up\` first" >&2; exit 3; }
	@$(BIN)/python bench/overload.py

bench-latency:  ## latency at a fixed arrival rate, no coordinated omission: GET product and POST order at 0.5x/0.8x of the capacity wrk measures just before (`make up` first): BENCH_LATENCY_DURATION=15
	@test -x $(BIN)/python || { echo "bench: no $(VENV): run \`make up\` first" >&2; exit 3; }
	@bash bench/ensure-wrk.sh
	@BENCH_ONLY=latency $(BIN)/python bench/run.py

bench-latency-plot:  ## PNG of the newest fixed-rate run's percentile spectrum (matplotlib in $(RUN)/plot-venv, not in the lock): LATENCY_PNG=docs/latency-fixed-rate.png
	@test -x $(RUN)/plot-venv/bin/python || { $(PYTHON) -m venv $(RUN)/plot-venv && $(RUN)/plot-venv/bin/pip install --quiet $(PLOT_MATPLOTLIB); }
	@$(RUN)/plot-venv/bin/python bench/latency_plot.py $(LATENCY_RESULT) $(LATENCY_PNG)

bench-scaling:  ## bench with 1, 2 and 4 products/orders processes (restarts the stack): BENCH_SCALING=1,2,4
	@test -x $(BIN)/python || { echo "bench: no $(VENV): run \`make up\` first" >&2; exit 3; }
	@bash bench/ensure-wrk.sh
	@$(BIN)/python bench/scaling.py

profile:  ## py-spy profiles of every stack process under one scenario: PROFILE_SCENARIO=orders
	@test -x $(BIN)/python || { echo "bench: no $(VENV): run \`make up\` first" >&2; exit 3; }
	@bash bench/ensure-wrk.sh
	@$(BIN)/python bench/profile.py

cluster-up:  ## a 3-node RabbitMQ cluster (shop-rabbit-1..3, AMQP 5701-5703), quorum vhost `shop`; prints AMQP_URI
	@$(PYTHON) scripts/rabbit_cluster.py up

cluster-down:  ## stop exactly the cluster-up nodes (never the default broker on 5672)
	@$(PYTHON) scripts/rabbit_cluster.py down

cluster-status:  ## nodes, members and the leader of each quorum queue
	@$(PYTHON) scripts/rabbit_cluster.py status

replica-up:  ## a PostgreSQL primary (5440) and streaming read replica (5441) under .run/pg-replica; prints the URIs for `make up`
	@$(PYTHON) scripts/pg_replica.py up

replica-down:  ## stop exactly the replica-up servers, by pid (never the default cluster on 5432)
	@$(PYTHON) scripts/pg_replica.py down

replica-status:  ## the pair's servers, replication state and replay lag
	@$(PYTHON) scripts/pg_replica.py status

backup-up:  ## a PostgreSQL primary (5442) under .run/pg-backup archiving its WAL to pgBackRest (.run/pgbackrest, stanza shop); prints the URIs for `make up`
	@$(PYTHON) scripts/pg_backup.py up

backup-down:  ## stop exactly the backup-up server, by pid (the repository is kept)
	@$(PYTHON) scripts/pg_backup.py down

backup:  ## pgBackRest backup of the backup-up primary: full the first time, incremental after (BACKUP_TYPE=full|diff|incr); prints its label
	@$(PYTHON) scripts/pg_backup.py backup $(if $(BACKUP_TYPE),--type $(BACKUP_TYPE))

restore:  ## point-in-time restore of the backup-up primary (`make down` first): make restore TARGET_TIME='2026-12-05 12:00:00+00'; without it, to the end of the archive
	@$(PYTHON) scripts/pg_backup.py restore $(if $(TARGET_TIME),--target-time '$(TARGET_TIME)') $(if $(RESTORE_FORCE),--force)

backup-status:  ## the backup-up primary, its WAL archiving and the repository's backups
	@$(PYTHON) scripts/pg_backup.py status

token: build  ## a local bearer JWT for AUTH_MODE=jwt: make token ROLE=admin, make token CUSTOMER=1
	@$(MANAGE) token $(if $(ROLE),--role $(ROLE)) $(if $(CUSTOMER),--customer $(CUSTOMER))

shell: build  ## interactive RPC: n.rpc.products.get_product(1)
	$(BIN)/nameko shell --config config.yml

test: build services  ## the whole suite on real RabbitMQ and PostgreSQL (faults included)
	$(BIN)/pytest $(PYTEST_ARGS)

test-faults: build services  ## only the fault tests: kill -9, SIGTERM, broker/database restarts
	$(BIN)/pytest tests/faults $(PYTEST_ARGS)

lint: build  ## ruff (lint and format check) over the code, mypy over common/ and the services (pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

alerts-check: build  ## promtool: check the alerting rules (deploy/prometheus/rules) and run their unit tests; the Kubernetes PrometheusRule up to date (docs/ALERTS.md)
	@command -v promtool >/dev/null || { echo "no promtool: apt-get install prometheus (Debian ships /usr/bin/promtool)" >&2; exit 3; }
	promtool check rules deploy/prometheus/rules/*.yml
	promtool test rules deploy/prometheus/tests/*.test.yml
	$(BIN)/python scripts/prometheus_rule.py --check

coverage: build services  ## line and branch coverage of the unit and e2e layers (the service processes included): report, and HTML in .run/coverage/html
	rm -rf .run/coverage && mkdir -p .run/coverage
	$(BIN)/coverage run -m pytest --ignore=tests/faults $(PYTEST_ARGS)
	$(BIN)/coverage combine -q
	$(BIN)/coverage report --sort=cover | tail -40
	$(BIN)/coverage html -q -d .run/coverage/html

lock:  ## re-pin requirements.lock from requirements.in
	rm -rf /tmp/shop-lock-venv && $(PYTHON) -m venv /tmp/shop-lock-venv
	/tmp/shop-lock-venv/bin/pip install --quiet -r requirements.in
	{ echo "# Generated by 'make lock' from requirements.in: every package pinned. Do not edit by hand."; \
	  /tmp/shop-lock-venv/bin/pip freeze --all --exclude pip; } > requirements.lock
