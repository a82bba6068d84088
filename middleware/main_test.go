package middleware_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/busway/busway/transport"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakePub records what it is asked to publish; fail makes it fail.
type fakePub struct {
	mu     sync.Mutex
	fail   error
	topics []string
	msgs   []*transport.Message
}

func (p *fakePub) Publish(_ context.Context, topic string, msgs ...*transport.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail != nil {
		return p.fail
	}
	for _, m := range msgs {
		p.topics = append(p.topics, topic)
		p.msgs = append(p.msgs, m.Clone())
	}
	return nil
}

func (p *fakePub) setFail(err error) {
	p.mu.Lock()
	p.fail = err
	p.mu.Unlock()
}

func (p *fakePub) got() ([]string, []*transport.Message) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.topics...), append([]*transport.Message(nil), p.msgs...)
}

func msg(id string) *transport.Message {
	return &transport.Message{ID: id, Key: "k-" + id, Topic: "orders", Group: "billing", Attempt: 1,
		Header: map[string]string{"h": "v"}, Body: []byte(`{"n":1}`)}
}

var errBoom = errors.New("boom")

func ok(context.Context, *transport.Message) error { return nil }

func failing(err error) func(context.Context, *transport.Message) error {
	return func(context.Context, *transport.Message) error { return err }
}
