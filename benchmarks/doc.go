// Package benchmarks compares busway with raw clients and peer libraries,
// measured in the same run. It is a separate module so that the peers
// (Watermill, ...) never enter busway's own module graph.
//
// Each comparison is a benchmark whose sub-benchmarks are the variants
// ("busway", "watermill", "raw-..."); each iteration is one message, and each
// reports msgs/s. Run them with `make bench`, which prints one table through
// ./cmd/benchtable.
package benchmarks
