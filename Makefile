# The README's two commands are `make demo` and `make test`; everything else is a building block.
SHELL := /bin/bash
.DEFAULT_GOAL := help
# What a user passes (SQL=..., FROM=..., SINKS=..., any VAR=value on the command line) reaches the
# recipes only through the environment, exactly as typed: make exports a command-line variable
# expanded (so `$(x)` in it would vanish and `$(shell ...)` run), hence each is re-exported as its
# raw value, and recipes read it as a quoted shell variable ("$$SQL"), never spliced into the
# command line, where backticks or $(...) in it would run. tests/unit/infra/test_makefile.py.
$(foreach v,$(.VARIABLES),$(if $(filter command line,$(origin $(v))),$(eval override export $(v) := $$(value $(v)))))
PY := .venv/bin/python
STACK := $(PY) -m infra.stack
# The Flink session cluster's TaskManagers (shell): TASKMANAGERS=N, else FLINK_TASKMANAGERS, else 2.
FLINK_TMS := $${TASKMANAGERS:-$${FLINK_TASKMANAGERS:-2}}
# The demo turns the HTTP sink on against the local receiver, unless it is configured already.
DEMO_HTTP := $(if $(value HTTP_SINK_URL)$(value HTTP_SINK_ROUTES_FILE),,HTTP_SINK_ROUTES_FILE=infra/http/routes.example.yaml)

.PHONY: flink-bootstrap flink-cluster flink-cluster-down flink flink-embedded test-flink bench-flink test-operations
.PHONY: help bootstrap up down status logs reset demo pipeline leaderboard test test-unit test-integration test-slow lint bench bench-generator bench-cdc bench-pipeline bench-drain bench-profile bench-ceiling bench-lanes bench-bigquery bench-http faults http-replay bigquery-roll bigquery-query rebuild-redis replay backfill clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

bootstrap: ## install Debian packages, the Python venv and the Kafka/Debezium jars (idempotent)
	@bash infra/bootstrap.sh

up: bootstrap ## start Postgres, Redis, Kafka, Connect + Debezium and wait until healthy
	@$(STACK) up

down: ## stop the local stack (data is kept)
	@if [ -x $(PY) ]; then $(STACK) down; fi

status: ## services, then the pipeline: lag per sink and partition, capture, rates, dead letters, breakers, freshness (JSON=1: all of it as JSON); exits 1 when unhealthy
	@$(STACK) status --with-pipeline $${JSON:+--json}

logs: ## last lines of every service's log (SERVICE=connect for one)
	@$(STACK) logs $${SERVICE:+--service "$$SERVICE"}

reset: ## delete connector and slot, stop everything, remove all local data
	@if [ -x $(PY) ]; then $(STACK) reset; fi

demo: up ## the main job: stack, CDC, the Beam pipeline, a live leaderboard, and seed 004's BigQuery query
	@echo "==> seeding the content catalogue"
	@$(PY) -m generator --seed-only
	@echo "==> CDC envelopes on Kafka"
	@$(STACK) tail --count 4
	@$(DEMO_HTTP) $(PY) -m pipeline.demo --duration "$${DEMO_SECONDS:-30}"
	@echo "The stack keeps running: 'make pipeline' runs the pipeline again, 'make down' stops the stack, 'make reset' removes its data."

pipeline: up ## run the streaming pipeline in the foreground (Ctrl-C stops it)
	@$(PY) -m pipeline

backfill: up ## fill sinks that have no positions from the Postgres tables (one snapshot), then hand over to the stream (SINKS=redis,bigquery)
	@$(PY) -m pipeline backfill $${SINKS:+--sinks "$$SINKS"}

dashboard: up ## the live leaderboard page alone (http://127.0.0.1:58090/, DASHBOARD_PORT); Ctrl-C stops it
	@$(PY) -m pipeline dashboard

leaderboard: ## print the live leaderboard from Redis
	@$(PY) -m sinks.leaderboard_view

lint: bootstrap ## ruff
	@$(PY) -m ruff check .
	@$(PY) -m ruff format --check . >/dev/null || { echo "ruff format would change files: run '$(PY) -m ruff format .'"; exit 1; }

test-unit: bootstrap ## unit tests (no services)
	@$(PY) -m pytest tests/unit -q

test-integration: bootstrap ## integration tests on a real native stack the fixtures start and stop (the slowest, marked slow, are left out)
	@$(PY) -m pytest tests/integration -q -m "not slow" --durations=10 --ignore=tests/integration/secure
	@# The secure stack (STACK_SECURE=1) in a run of its own, so the two stacks are never up together.
	@$(PY) -m pytest tests/integration/secure -q -m "not slow" --durations=5

test-slow: bootstrap ## SLOW (~4 min), not in make test: the integration tests marked slow
	@$(PY) -m pytest tests/integration -q -m slow

test: lint test-unit test-integration ## everything CI runs

flink-bootstrap: bootstrap ## Flink 1.19 and Beam's Flink job server jars into .stack/lib/flink (about 170 MB from Maven Central; idempotent)
	@bash infra/bootstrap.sh --flink

flink-cluster: flink-bootstrap ## a Flink session cluster: a JobManager, TASKMANAGERS (default 2) TaskManagers and a Python worker pool each (idempotent)
	@$(PY) -m infra.stack.flink_cluster up --taskmanagers "$(FLINK_TMS)"

flink-cluster-down: ## stop the Flink session cluster
	@if [ -x $(PY) ]; then $(PY) -m infra.stack.flink_cluster down; fi

flink: up flink-cluster ## the streaming pipeline on the Flink session cluster (a source reader per TaskManager), in the foreground
	@FLINK_MASTER="$${FLINK_MASTER:-127.0.0.1:$${FLINK_REST_PORT:-58081}}" FLINK_ENVIRONMENT=external \
	  FLINK_TASKMANAGERS="$(FLINK_TMS)" PIPELINE_READERS="$${PIPELINE_READERS:-$(FLINK_TMS)}" $(PY) -m pipeline --runner flink

flink-embedded: up flink-bootstrap ## the pipeline on Flink embedded in the job server (one JVM, Python in the job process), in the foreground
	@PIPELINE_READERS="$${PIPELINE_READERS:-2}" $(PY) -m pipeline --runner flink

test-flink: flink-bootstrap ## SLOW (~11 min), not in make test: embedded Flink vs SQL (bounded, kill -9 of job server and job), then the session cluster under load with kill -9 of a TaskManager and of the JobManager
	@$(PY) -m pytest tests/flink -q

bench-flink: up flink-bootstrap ## SLOW (~25 min): drain 2M envelopes on 1 and 2 TaskManagers and Prism (two rounds), then commit -> board at 3,333 events/s on the cluster and Prism
	@$(PY) -m loadtest.bench_flink drain && $(PY) -m loadtest.bench_flink latency

test-operations: bootstrap ## SLOW (~5 min), not in make test: backfill, rebuild-redis and replay against SQL on a stack of their own
	@$(PY) -m pytest tests/operations -q

faults: bootstrap ## SLOW (~35 min), not in make test: each fault under 1,500 events/s, sinks vs SQL, a table (ONLY=fault for one)
	@$(PY) -m loadtest.faults $${ONLY:+--only "$$ONLY"}

bench-security: bootstrap ## SLOW (~12 min with the default 2 rounds): TLS and SASL cost, plain vs STACK_SECURE stacks of its own, alternating (drain, then commit -> board at 3,333 events/s)
	@$(PY) -m loadtest.bench_security --rounds "$${BENCH_ROUNDS:-2}"

bench-generator: up ## generator write rate into Postgres (prints figures)
	@$(PY) -m loadtest.bench_generator

bench-cdc: up ## Debezium capture throughput (100k burst) and commit-to-Kafka latency
	@$(PY) -m loadtest.bench_cdc

bench-pipeline: up ## pipeline drain rate, end-to-end latency, highest sustained rate, burst
	@$(PY) -m loadtest.bench_pipeline drain --events "$${BENCH_EVENTS:-1000000}"
	@$(PY) -m loadtest.bench_pipeline latency --rate 3333 --duration "$${BENCH_SECONDS:-300}"
	@$(PY) -m loadtest.bench_pipeline max-rate --rates 5000,7500,10000,12500,15000 --step-duration 60
	@$(PY) -m loadtest.bench_pipeline burst --events 100000

bench-lanes: up ## Redis latency while another sink is down for 60 s; the cost of an extra lane
	@$(PY) -m loadtest.bench_lanes --rate 3333 --duration "$${BENCH_LANE_SECONDS:-120}" --outage 60

bench-drain: up ## drain: the pipeline (exactly once) against a hand-written consumer (loadtest/baseline_consumer.py), alternating, 3 rounds
	@$(PY) -m loadtest.bench_pipeline drain --events "$${BENCH_EVENTS:-1000000}" --rounds "$${BENCH_ROUNDS:-3}"

bench-profile: up ## py-spy on the worker during a drain: docs/img/drain-profile.svg and where each thread's time goes
	@$(PY) -m loadtest.profile_drain --seconds "$${BENCH_SECONDS:-20}"

bench-ceiling: up ## the BigQuery lane against a null BigQuery (loadtest/null_bigquery.py): rows/s per worker process, both write modes
	@$(PY) -m loadtest.bench_bigquery ceiling --events "$${BENCH_EVENTS:-400000}" --rounds "$${BENCH_ROUNDS:-2}"

bench-bigquery: up ## BigQuery: insertAll rate per request size, drain rate, commit -> visible, the board's cost
	@$(PY) -m loadtest.bench_bigquery insert --batches 100,500,1000,2000
	@$(PY) -m loadtest.bench_bigquery drain --events "$${BENCH_BQ_EVENTS:-100000}"
	@$(PY) -m loadtest.bench_bigquery latency --rate "$${BENCH_BQ_RATE:-3333}" --duration "$${BENCH_BQ_SECONDS:-120}"

http-replay: up ## send the HTTP dead-letter topic again (ENDPOINT=name for one; FROM_BEGINNING=1 for all)
	@$(DEMO_HTTP) $(PY) -m sinks.http_replay $${ENDPOINT:+--endpoint "$$ENDPOINT"} $${FROM_BEGINNING:+--from-beginning}

bench-http: up ## HTTP: throughput to the receiver, commit -> received, Redis p99 with the receiver down 60 s
	@$(PY) -m loadtest.bench_http throughput --events "$${BENCH_HTTP_EVENTS:-200000}"
	@$(PY) -m loadtest.bench_http latency --rate 3333 --duration "$${BENCH_HTTP_SECONDS:-120}"
	@$(PY) -m loadtest.bench_http outage --rate 3333 --duration "$${BENCH_HTTP_SECONDS:-120}" --outage 60

bigquery-roll: up ## create the coming quarters' changelog tables; RETAIN=N drops quarters older than the last N
	@$(PY) -m sinks.bigquery_admin roll $${RETAIN:+--retain "$$RETAIN"}

bigquery-query: up ## run seed 004's query on BigQuery (SQL="..." for another)
	@$(PY) -m sinks.bigquery_admin query $${SQL:+"$$SQL"}

rebuild-redis: up ## rebuild the Redis boards from the Kafka topics into fresh keys and swap them in atomically (the pipeline may run)
	@$(PY) -m pipeline rebuild-redis

replay: up ## re-send one sink from a time or offsets up to its positions: SINK=bigquery FROM=2026-12-06T10:00:00Z (or FROM=0, FROM=3:120,5:0)
	@$(if $(and $(value SINK),$(value FROM)),,$(error give SINK=<sink> and FROM=<ISO time or offsets>))case "$$FROM" in \
	  *T*) from=--from-timestamp ;; *) from=--from-offset ;; esac; \
	  $(PY) -m pipeline replay --sink "$$SINK" "$$from" "$$FROM"

bench-charts: bootstrap ## PNG charts of the sustained runs' time series (.bench/*.json) into docs/img/
	@$(PY) -m loadtest.charts

bench: bench-generator bench-cdc bench-pipeline bench-lanes bench-bigquery bench-http ## all benchmarks, then their charts
	@$(MAKE) --no-print-directory bench-charts

.PHONY: loadtest
loadtest: up ## locust headless, pipeline running: writers at RATE events/s + an SLA user (commit -> board, 5 s); CSV/HTML in .loadtest/ (USERS=8 SPAWN_RATE=8 DURATION=60s RATE=3333)
	@$(PY) -m loadtest.run_locust --users "$${USERS:-8}" --spawn-rate "$${SPAWN_RATE:-8}" --duration "$${DURATION:-60s}" --rate "$${RATE:-3333}"

.PHONY: dataflow-graph
dataflow-graph: bootstrap ## build the Dataflow job offline (DataflowRunner --dry_run, no GCP, no services) and print its steps (DEPTH=3)
	@$(PY) -m pipeline.dataflow_graph --depth "$${DEPTH:-3}"

clean: reset ## reset, and remove the venv and downloaded jars
	rm -rf .venv .stack .stack-test .stack-faults .stack-secure-test
