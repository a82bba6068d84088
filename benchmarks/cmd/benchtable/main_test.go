package main

import (
	"strings"
	"testing"
)

const sample = `goos: linux
pkg: github.com/busway/busway/transport/kafka
BenchmarkPublishBatch/busway-2         	  200000	      5000 ns/op	    200000 msgs/s	     900 B/op	      12 allocs/op
BenchmarkPublishBatch/raw-kafka-go-2   	   50000	     20000 ns/op	     50000 msgs/s	    2000 B/op	      30 allocs/op
BenchmarkPublishBatch/kgo-2            	  400000	      2500 ns/op	    400000 msgs/s	     300 B/op	       5 allocs/op
BenchmarkSolo-2                        	  100000	      1000 ns/op
pkg: github.com/busway/busway/middleware
BenchmarkChain/bare-2                  	 1000000	      1000 ns/op	     0 allocs/op
BenchmarkChain/recommended-chain-2     	  500000	      2000 ns/op	     4 allocs/op
`

func TestParseAndRatios(t *testing.T) {
	groups, err := parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	if len(groups) != 2 || groups[0].name != "transport/kafka PublishBatch" || len(groups[0].rows) != 3 {
		t.Fatalf("groups = %+v", groups)
	}
	var out strings.Builder
	write(&out, groups)
	for _, want := range []string{"4.00x", "0.50x", "raw-kafka-go", "recommended-chain", "0.50x"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
	// without msgs/s the throughput comes from ns/op: bare 1e6 msgs/s, chain 5e5.
	if r := groups[1].rows[1]; r.msgsPerSec != 5e5 || r.allocsPerMsg != 4 {
		t.Fatalf("chain row = %+v", r)
	}
}
