# busway: make demo, make test, make lint, make bench, make bench-short.
GO          ?= go
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: all demo quickstart test lint bench bench-short stress fuzz soak

all: lint test

# Runs the orders example (examples/orders) in its scripted mode on embedded defaults
# (NATS JetStream in process, data in ./orders-data): places 300 orders through its HTTP
# API, waits until each reached its final state, prints a summary. No server needed.
demo:
	$(GO) run ./examples/orders -demo

# The smallest example: the typed API on Go channels.
quickstart:
	$(GO) run ./examples/quickstart

# The test command CI runs. Services are optional: NATS, PostgreSQL and real Kafka tests
# also run against real servers when BUS_TEST_NATS_URL, BUS_TEST_POSTGRES_DSN,
# BUS_TEST_KAFKA_BROKERS are set (.ci/run sets them).
test:
	$(GO) test -race -count=1 -timeout 20m ./...

lint:
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

# The benchmark suite (benchmarks/, its own module): every case against the raw clients and
# peers, each several times, in one run of 6-10 minutes (host speed); prints the comparison table and
# writes benchmarks/RESULTS.md, results.svg (the chart the README shows) and results.txt.
bench:
	cd benchmarks && $(GO) run ./cmd/benchrun

# A smoke run of every case (a few thousand messages each, about a minute), so the suite
# cannot rot; CI runs it. Writes its report to BENCH_SHORT_OUT, not over the committed one.
# -mod=mod: benchmarks/ replaces busway with ../, so a dependency added to the main module
# must not break the smoke run before someone tidies benchmarks/go.sum.
BENCH_SHORT_OUT ?= $(or $(TMPDIR),/tmp)/busway-bench-short
bench-short:
	cd benchmarks && export GOFLAGS=-mod=mod && $(GO) vet ./... && $(GO) test -count=1 ./cmd/... && \
		$(GO) run ./cmd/benchrun -short -out $(BENCH_SHORT_OUT)

# The conformance suites repeated: BUS_STRESS=N runs each N times.
stress:
	BUS_STRESS=$${BUS_STRESS:-5} $(GO) test -race -count=1 -timeout 60m -run Conformance ./transport/...

# Each fuzz target for FUZZTIME (go test -fuzz runs one target at a time). Inputs that found
# a bug are kept under each package's testdata/fuzz and run by every go test.
FUZZTIME ?= 20s
FUZZ_TARGETS = ./bus:FuzzDecodeEnvelope ./bus:FuzzFlatJSON ./bus:FuzzFlatJSONEncode ./bus:FuzzTime .:FuzzOpenURL ./middleware:FuzzDeadLetter
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; echo "== $$name ($$pkg, $(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) $$pkg; \
	done

# The soak: SOAK messages (default 1,000,000) through each transport with the recommended
# middleware chain, and a tenth of it first; prints throughput, peak heap and peak RSS of
# both (internal/reliability TestSoak). .ci/run runs a short one (SOAK=20000).
SOAK ?= 1000000
soak:
	BUS_SOAK=$(SOAK) $(GO) test -count=1 -v -timeout 60m -run '^TestSoak$$' ./internal/reliability
