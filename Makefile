# busway: make demo, make test, make lint, make bench.
GO          ?= go
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
BENCHTIME   ?= 1s

.PHONY: all demo test lint bench stress fuzz

all: lint test

# Runs the quickstart on embedded defaults: no server needed.
demo:
	$(GO) run ./examples/quickstart

# The test command CI runs. Services are optional: NATS, PostgreSQL and real Kafka tests
# also run against real servers when BUS_TEST_NATS_URL, BUS_TEST_POSTGRES_DSN,
# BUS_TEST_KAFKA_BROKERS are set (.ci/run sets them).
test:
	$(GO) test -race -count=1 -timeout 20m ./...

lint:
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

# Benchmarks against raw clients and peers, in one run, printed as one table.
bench:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./... | tee bench.out
	cd benchmarks && $(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./... | tee -a ../bench.out
	cd benchmarks && $(GO) run ./cmd/benchtable < ../bench.out

# The conformance suites repeated: BUS_STRESS=N runs each N times.
stress:
	BUS_STRESS=$${BUS_STRESS:-5} $(GO) test -race -count=1 -timeout 60m -run Conformance ./transport/...

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDecodeEnvelope -fuzztime 60s ./bus
