package main

import (
	"fmt"
	"math"
	"slices"
)

// A comparison is busway's case against a reference measured in the same
// run. Throughput comparisons divide busway's msgs/s by the reference's
// (higher is better); latency comparisons divide busway's p99 by the
// reference's (lower is better); an absolute check compares one value with
// its bound.
type comparison struct {
	title       string
	busway      string // case name
	ref         string // case name; "" for an absolute check
	unit        string // "msgs/s", "p99-µs", "allocs/op"
	target      float64
	lowerBetter bool
	note        string // how the target reads, e.g. "within 5x"

	// filled by compare
	have               bool
	ratio              float64 // ratio of medians, or the median for an absolute check
	ratioMin, ratioMax float64 // range of the per-run ratios (runs pair up in order)
	bMed, rMed         float64
	// cpu is the reference's CPU per message ÷ busway's (higher is
	// better), for throughput comparisons whose cases both report
	// cpu-ns/msg; 0 when they do not.
	cpu float64
}

func (c *comparison) met() bool {
	if c.target == 0 {
		return true
	}
	if c.lowerBetter {
		return c.ratio <= c.target
	}
	return c.ratio >= c.target
}

func (c *comparison) targetText() string {
	if c.target == 0 {
		return "—"
	}
	op := "≥"
	if c.lowerBetter {
		op = "≤"
	}
	t := fmt.Sprintf("%s %gx", op, c.target)
	if c.ref == "" {
		t = fmt.Sprintf("%s %g", op, c.target)
	}
	if c.note != "" {
		t += " (" + c.note + ")"
	}
	return t
}

func comparisons() []*comparison {
	var cs []*comparison
	for _, size := range []string{"256B", "4KiB"} {
		in := func(v string) string { return "InProc/" + size + "/" + v }
		ty := func(v string) string { return "Typed/" + size + "/" + v }
		kp := func(v string) string { return "KafkaPublish/" + size + "/" + v }
		kc := func(v string) string { return "KafkaConsume/" + size + "/" + v }
		np := func(v string) string { return "NATSPublish/" + size + "/" + v }
		nc := func(v string) string { return "NATSConsume/" + size + "/" + v }
		cs = append(cs,
			&comparison{title: "chanbus vs raw channel " + size, busway: in("busway-chanbus"), ref: in("raw-chan"), unit: "msgs/s", target: 0.2, note: "within 5x"},
			&comparison{title: "chanbus vs Watermill GoChannel " + size, busway: in("busway-chanbus"), ref: in("watermill-gochannel"), unit: "msgs/s", target: 10},
			&comparison{title: "typed+Recover+Retry vs Watermill Router " + size, busway: ty("busway-recover-retry"), ref: ty("watermill-router"), unit: "msgs/s", target: 10},
			&comparison{title: "typed+Recover+Retry allocs/msg " + size, busway: ty("busway-recover-retry"), unit: "allocs/op", target: 8, lowerBetter: true},
			&comparison{title: "typed bare vs Watermill Router " + size, busway: ty("busway"), ref: ty("watermill-router"), unit: "msgs/s"},
			&comparison{title: "Kafka batched publish vs kgo ProduceSync " + size, busway: kp("busway-batch"), ref: kp("kgo-produce-sync"), unit: "msgs/s", target: 1},
			&comparison{title: "Kafka batched publish vs kafka-go Writer " + size, busway: kp("busway-batch"), ref: kp("raw-kafka-go-writer"), unit: "msgs/s"},
			&comparison{title: "Kafka consume c1 vs kgo group " + size, busway: kc("busway-c1"), ref: kc("kgo-group"), unit: "msgs/s", target: 1},
			&comparison{title: "Kafka consume c16 vs kgo group " + size, busway: kc("busway-c16"), ref: kc("kgo-group"), unit: "msgs/s", target: 1},
			&comparison{title: "Kafka consume c1 vs kafka-go commit-each " + size, busway: kc("busway-c1"), ref: kc("raw-kafka-go-commit-each"), unit: "msgs/s", target: 10},
			&comparison{title: "NATS single publish vs PublishMsg " + size, busway: np("busway-single"), ref: np("raw-sync"), unit: "msgs/s", target: 0.95},
			&comparison{title: "NATS batched publish vs PublishMsgAsync " + size, busway: np("busway-batch"), ref: np("raw-async-batch"), unit: "msgs/s", target: 1},
			&comparison{title: "NATS consume vs Consume+Ack " + size, busway: nc("busway"), ref: nc("raw-consume-ack"), unit: "msgs/s", target: 1},
		)
	}
	cs = append(cs,
		&comparison{title: "Kafka 1 ms handler, c16 vs sequential kafka-go", busway: "KafkaSlowHandler/busway-c16", ref: "KafkaSlowHandler/raw-kafka-go-sequential", unit: "msgs/s", target: 15, note: "16x is the limit"},
		&comparison{title: "latency p99, chanbus vs raw channel", busway: "Latency/chanbus/busway", ref: "Latency/chanbus/raw-chan", unit: "p99-µs", target: 1.2, lowerBetter: true},
		&comparison{title: "latency p99 µs, chanbus", busway: "Latency/chanbus/busway", unit: "p99-µs", target: 50, lowerBetter: true},
		&comparison{title: "latency p99, NATS vs nats.go", busway: "Latency/nats/busway", ref: "Latency/nats/raw-nats", unit: "p99-µs", target: 1.2, lowerBetter: true},
		&comparison{title: "latency p99, Kafka vs kgo", busway: "Latency/kafka/busway", ref: "Latency/kafka/raw-kgo", unit: "p99-µs", target: 1.2, lowerBetter: true},
		// The outbox benchmarks (main module) measure their raw reference in
		// the same call and report the ratio themselves.
		&comparison{title: "outbox: 4 writers + relay vs insert-only, 1-row tx", busway: "outbox: PGWriters/tx=1", unit: "relay/raw", target: 0.9},
		&comparison{title: "outbox: 4 writers + relay vs insert-only, 10-row tx", busway: "outbox: PGWriters/tx=10", unit: "relay/raw", target: 0.9},
		&comparison{title: "outbox: PostgreSQL drain to chanbus vs select+delete", busway: "outbox: PGDrain", unit: "relay/raw", target: 0.5, note: "within 2x"},
		&comparison{title: "outbox: PostgreSQL drain to chanbus, events/s", busway: "outbox: PGDrain", unit: "msgs/s", target: 100000},
		&comparison{title: "outbox: PostgreSQL drain to NATS vs PublishMsgAsync", busway: "outbox: NATSDrain/postgres", unit: "relay/raw", target: 0.5, note: "within 2x"},
		&comparison{title: "outbox: SQLite drain to NATS vs PublishMsgAsync", busway: "outbox: NATSDrain/sqlite", unit: "relay/raw", target: 0.5, note: "within 2x"},
		&comparison{title: "outbox: SQLite drain to chanbus, events/s", busway: "outbox: SQLiteDrain", unit: "msgs/s", target: 10000},
		&comparison{title: "outbox: commit-to-handler p50 ms at 500/s", busway: "outbox: PGLatency/Wake", unit: "p50-ms", target: 1, lowerBetter: true},
		&comparison{title: "outbox: commit-to-handler p99 ms at 500/s", busway: "outbox: PGLatency/Wake", unit: "p99-ms", target: 5, lowerBetter: true},
	)
	return cs
}

// compare fills in the comparisons whose cases ran.
// cpuUnit is the metric of a case's process CPU time per message.
const cpuUnit = "cpu-ns/msg"

func compare(c *cases) []*comparison {
	var out []*comparison
	for _, cmp := range comparisons() {
		b := c.get(cmp.busway)
		bs, ok := b.stat(cmp.unit)
		if !ok {
			continue
		}
		cmp.bMed = bs.med
		if cmp.ref == "" {
			cmp.have, cmp.ratio, cmp.ratioMin, cmp.ratioMax = true, bs.med, bs.min, bs.max
			out = append(out, cmp)
			continue
		}
		r := c.get(cmp.ref)
		rs, ok := r.stat(cmp.unit)
		if !ok || rs.med == 0 {
			continue
		}
		cmp.rMed = rs.med
		cmp.have, cmp.ratio = true, bs.med/rs.med
		if cmp.unit == "msgs/s" {
			bc, okB := b.stat(cpuUnit)
			rc, okR := r.stat(cpuUnit)
			if okB && okR && bc.med > 0 {
				cmp.cpu = rc.med / bc.med
			}
		}
		// Runs pair up: run i of busway and run i of the reference ran
		// in the same pass, one soon after the other.
		bv, rv := b.runs[cmp.unit], r.runs[cmp.unit]
		var per []float64
		for i := range min(len(bv), len(rv)) {
			if rv[i] > 0 {
				per = append(per, bv[i]/rv[i])
			}
		}
		if len(per) > 0 {
			cmp.ratioMin, cmp.ratioMax = slices.Min(per), slices.Max(per)
		} else {
			cmp.ratioMin, cmp.ratioMax = math.NaN(), math.NaN()
		}
		out = append(out, cmp)
	}
	return out
}
