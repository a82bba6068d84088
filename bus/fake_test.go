package bus_test

import (
	"context"
	"fmt"
	"sync"

	"github.com/busway/busway/transport"
)

// fakeTransport delivers synchronously inside Publish, once per group, and
// records what happened, so that dispatch tests are deterministic. The
// tests of real delivery run on chanbus.
type fakeTransport struct {
	mu      sync.Mutex
	subs    map[string][]*fakeSub
	closed  bool
	events  []string // "subscribe topic/group", "close-sub topic/group", "close"
	results []fakeResult
}

type fakeResult struct {
	Group string
	ID    string
	Err   error
}

type fakeSub struct {
	t      *fakeTransport
	topic  string
	h      transport.Handler
	opts   transport.SubscribeOptions
	closed bool
}

var _ transport.Transport = (*fakeTransport)(nil)

func newFake() *fakeTransport { return &fakeTransport{subs: make(map[string][]*fakeSub)} }

func (f *fakeTransport) Publish(ctx context.Context, topic string, msgs ...*transport.Message) error {
	if err := transport.ValidatePublish(topic, msgs); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return transport.ErrClosed
	}
	subs := append([]*fakeSub(nil), f.subs[topic]...)
	f.mu.Unlock()
	for _, m := range msgs {
		for _, s := range subs {
			d := m.Clone()
			d.Topic, d.Group, d.Attempt = topic, s.opts.Group, 1
			err := s.h(ctx, d)
			f.mu.Lock()
			f.results = append(f.results, fakeResult{Group: s.opts.Group, ID: m.ID, Err: err})
			f.mu.Unlock()
		}
	}
	return nil
}

// deliver hands a raw message to every subscription of topic, as a foreign
// producer's message would arrive.
func (f *fakeTransport) deliver(ctx context.Context, topic string, m *transport.Message) []fakeResult {
	f.mu.Lock()
	n := len(f.results)
	f.mu.Unlock()
	if err := f.Publish(ctx, topic, m); err != nil {
		return []fakeResult{{Err: err}}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeResult(nil), f.results[n:]...)
}

func (f *fakeTransport) Subscribe(ctx context.Context, topic string, h transport.Handler, opts transport.SubscribeOptions) (transport.Subscription, error) {
	if err := transport.ValidateTopic(topic); err != nil {
		return nil, err
	}
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, transport.ErrClosed
	}
	s := &fakeSub{t: f, topic: topic, h: h, opts: opts}
	f.subs[topic] = append(f.subs[topic], s)
	f.events = append(f.events, fmt.Sprintf("subscribe %s/%s", topic, opts.Group))
	return s, nil
}

func (s *fakeSub) Close(ctx context.Context) error {
	f := s.t
	f.mu.Lock()
	defer f.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	subs := f.subs[s.topic]
	for i, o := range subs {
		if o == s {
			f.subs[s.topic] = append(subs[:i:i], subs[i+1:]...)
			break
		}
	}
	f.events = append(f.events, fmt.Sprintf("close-sub %s/%s", s.topic, s.opts.Group))
	return nil
}

func (f *fakeTransport) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.closed {
		f.closed = true
		f.events = append(f.events, "close")
	}
	return nil
}

func (f *fakeTransport) log() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.events...)
}
