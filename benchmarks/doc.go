// Package benchmarks compares busway with raw clients and peer libraries,
// measured in the same run. It is a separate module so that the peers
// (Watermill, franz-go's kgo, ...) never enter busway's own module graph.
//
// Each case is a Go benchmark whose iteration is one message, at 256 B and
// 4 KiB payloads: Benchmark<Area>/<size>/<variant>, where the variants are
// busway's ("busway-...") and the references ("raw-...", "watermill-...",
// "kgo-..."). Every case reports msgs/s, ns/msg, allocs/msg and B/msg;
// BenchmarkLatency reports publish-to-handler percentiles at a fixed rate.
// Each broker case gets its own kfake cluster or embedded nats-server,
// closed after it.
//
// `make bench` runs them through ./cmd/benchrun, which repeats each case,
// prints the comparisons against the targets and writes RESULTS.md and
// results.svg; `make bench-short` is its smoke run. One case by hand:
//
//	go test -run '^$' -bench 'KafkaPublish/256B' -benchmem -benchtime 20000x .
package benchmarks
