# The README's two commands: `make demo` and `make test`. Both set up everything they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
KAFKA_PORT ?= 9092
export CASCADE_KAFKA_BOOTSTRAP ?= 127.0.0.1:$(KAFKA_PORT)

.PHONY: demo test lint typecheck unit kafka-up kafka-down postgres rabbitmq deploy-tools schema-registry openstack clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,tools,notifications,bench]'
	touch $@

kafka-up: $(BIN)/.installed
	$(BIN)/cascade-connector local-kafka --port $(KAFKA_PORT) start

kafka-down: $(BIN)/.installed
	$(BIN)/cascade-connector local-kafka --port $(KAFKA_PORT) stop

# mypy checks connector/, tests/ and bench/ (pyproject.toml), which is why the venv has bench's extra.
lint: $(BIN)/.installed
	$(BIN)/ruff check connector tests bench
	$(BIN)/ruff format --check connector tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy

typecheck: $(BIN)/.installed
	$(BIN)/mypy

unit: $(BIN)/.installed
	$(BIN)/pytest -q tests/unit

# The SQL sink's integration tests start throwaway clusters from Debian's PostgreSQL binaries.
postgres:
	bash scripts/ensure-debian-package.sh postgresql '/usr/lib/postgresql/*/bin/initdb'

# The notification tests start throwaway nodes from Debian's rabbitmq-server.
rabbitmq:
	bash scripts/ensure-debian-package.sh rabbitmq-server /usr/lib/rabbitmq/bin/rabbitmq-server

# The validators of deploy/ (promtool, systemd-analyze, compose-go, kustomize, a CRD schema).
deploy-tools:
	bash scripts/ensure-deploy-tools.sh >/dev/null

# A real Schema Registry (Apicurio, from Maven Central) for the registry framing test.
schema-registry:
	bash scripts/ensure-schema-registry.sh >/dev/null

# Real Keystone and cinder-api, and neutron-server (pinned, from PyPI), in venvs of their own
# outside the repository.
openstack:
	bash scripts/ensure-openstack.sh >/dev/null

# The tests' broker: started here unless one already runs on KAFKA_PORT, and then stopped
# when the tests end, pass or fail (a broker that was already running is left alone).
test: lint postgres rabbitmq deploy-tools schema-registry openstack
	@kafka="$(BIN)/cascade-connector local-kafka --port $(KAFKA_PORT)"; \
	if $$kafka status >/dev/null 2>&1; then started=; else $$kafka start || exit 1; started=1; fi; \
	$(BIN)/pytest -q -ra --durations=25; status=$$?; \
	if [ -n "$$started" ]; then $$kafka stop; fi; \
	exit $$status

demo: kafka-up
	$(BIN)/cascade-connector demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
