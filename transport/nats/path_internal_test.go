package nats

import (
	"bufio"
	"bytes"
	"context"
	"log/slog"
	"net"
	"runtime"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/busway/busway/transport"
)

// BenchmarkPath: the client's own work per message, without a server:
// what the pull inbox's goroutine does with a message (accept) and what
// the worker does with it (fill, handler, ack, release), one worker, on
// messages made before the clock starts, in bursts of 32 (the next once
// the last is handled), as nats.go hands over what it read. The acks go
// to a sink that drops them; no pull request goes out. cpu-ns/msg is the
// process's CPU time: the client's alone, unlike the benchmarks against a
// server, whose CPU time is mostly the server's.
func BenchmarkPath(b *testing.B) {
	// The acks go to a sink that speaks just enough of the protocol for
	// nats.go to connect, and drops the rest: the CPU is the client's.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = c.Write([]byte("INFO {\"server_id\":\"sink\",\"version\":\"2.10.0\",\"proto\":1,\"headers\":true,\"max_payload\":1048576}\r\n"))
				r := bufio.NewReaderSize(c, 64<<10)
				for {
					line, err := r.ReadSlice('\n')
					if err != nil && err != bufio.ErrBufferFull {
						return
					}
					if bytes.HasPrefix(line, []byte("PING")) {
						_, _ = c.Write([]byte("PONG\r\n"))
					}
				}
			}()
		}
	}()
	nc, err := natsgo.Connect("nats://" + ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	tr := &Transport{nc: nc, log: slog.New(slog.DiscardHandler)}
	const maxHeld = 256
	var n atomic.Int64
	done := make(chan struct{})
	// The messages come in bursts, as the inbox's goroutine takes them
	// from what nats.go read: the next burst once the last is handled.
	const burst = 32
	burstDone := make(chan struct{}, 1)
	target := int64(b.N)
	s := &subscription{
		t: tr, topic: "bench", group: "g",
		h: func(_ context.Context, m *transport.Message) error {
			if m.ID == "" || m.Attempt == 0 {
				b.Error("no ID or attempt")
			}
			if k := n.Add(1); k == target {
				close(done)
			} else if k%burst == 0 {
				burstDone <- struct{}{}
			}
			return nil
		},
		ss:        &subSettings{ackWait: 30 * time.Second, maxDeliver: -1, maxAckPending: 2048, maxHeld: maxHeld, durable: "g_bench_0a1b2c3d"},
		ackPrefix: "$JS.ACK.BUSWAY.g_bench_0a1b2c3d.",
		start:     time.Now(),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	// refill above MaxHeld: kick never asks for messages.
	s.pull = puller{s: s, mu: &s.held.mu, refill: maxHeld + 1, inbox: &pullInbox{prefix: "_INBOX.bench."}, room: make(chan struct{}, 1), reset: make(chan struct{}, 1)}
	s.pull.pulls = []pullReq{{id: 1, left: b.N + 1}}
	s.pull.asked.Store(int32(b.N + 1))
	s.held = heldSet{s: s}
	s.deliver = newDelivery(s, context.Background(), 1)
	body := make([]byte, 256)
	ts := strconv.FormatInt(time.Now().UnixNano(), 10)
	msgs := make([]*natsgo.Msg, b.N)
	for i := range msgs {
		seq := strconv.Itoa(i + 1)
		msgs[i] = &natsgo.Msg{
			Subject: "busway.bench", Data: body,
			Reply:  s.ackPrefix + "1." + seq + "." + seq + "." + ts + ".0",
			Header: natsgo.Header{headerMsgID: []string{"busway.bench/id-" + seq}},
		}
	}
	s.deliver.start()
	runtime.GC()
	cpu0 := processCPU()
	b.ResetTimer()
	for i, m := range msgs {
		s.pull.receive(m)
		if i%burst == burst-1 && i < len(msgs)-1 {
			<-burstDone
		}
	}
	<-done
	b.StopTimer()
	b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/msg")
	s.held.startClosing()
	s.deliver.finish()
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
