package nats

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/backoff"
)

// SubscribeOption is a NATS-specific subscribe option, passed in
// transport.SubscribeOptions.Specific. Other transports ignore it.
type SubscribeOption struct {
	name  string
	apply func(*subSettings) error
}

// Transport returns "nats".
func (SubscribeOption) Transport() string { return Scheme }

func (o SubscribeOption) String() string { return "nats." + o.name }

// AckWait overrides Config.AckWait for one subscription's consumer.
func AckWait(d time.Duration) SubscribeOption {
	return positive("AckWait", d, func(s *subSettings) { s.ackWait = d })
}

// positive is an option that set applies when d is positive.
func positive(name string, d time.Duration, set func(*subSettings)) SubscribeOption {
	return SubscribeOption{name, func(s *subSettings) error {
		if d <= 0 {
			return fmt.Errorf("%s %v is not positive", name, d)
		}
		set(s)
		return nil
	}}
}

// MaxDeliver overrides Config.MaxDeliver (-1: unlimited).
func MaxDeliver(n int) SubscribeOption {
	return SubscribeOption{"MaxDeliver", func(s *subSettings) error {
		if n == 0 || n < -1 {
			return fmt.Errorf("MaxDeliver %d is neither positive nor -1 (unlimited)", n)
		}
		s.maxDeliver = n
		return nil
	}}
}

// NakDelays overrides Config.NakDelays: the delays before redelivering a
// message whose handler failed, by attempt; the last repeats.
func NakDelays(d ...time.Duration) SubscribeOption {
	return SubscribeOption{"NakDelays", func(s *subSettings) error {
		if len(d) == 0 {
			return errors.New("NakDelays needs at least one delay")
		}
		for i, v := range d {
			if v < 0 {
				return fmt.Errorf("NakDelays[%d] %v is negative", i, v)
			}
		}
		s.nakDelays = d
		return nil
	}}
}

// MaxAckPending overrides the default max(2048, 64*Concurrency) of
// Config.MaxAckPending.
func MaxAckPending(n int) SubscribeOption {
	return SubscribeOption{"MaxAckPending", func(s *subSettings) error {
		if n <= 0 {
			return fmt.Errorf("MaxAckPending %d is not positive", n)
		}
		s.maxAckPending = n
		return nil
	}}
}

// Durable sets the consumer's durable name instead of the one derived
// from group and topic ("<group>_<topic>_<hash>"), for example to take
// over a consumer made by other tools. It must not be shared between
// topics.
func Durable(name string) SubscribeOption {
	return SubscribeOption{"Durable", func(s *subSettings) error {
		if p := nameProblem(name); p != "" {
			return fmt.Errorf("Durable %q is not a consumer name: %s", name, p)
		}
		s.durable = name
		return nil
	}}
}

// MaxHeld caps the messages one subscription holds, received from the
// server and not yet finished (queued for a worker or being handled); it
// asks for more once half of it is free. The default is min(max(256,
// 2*Concurrency), max(MaxAckPending/8, Concurrency)), at most
// MaxAckPending: 256 with the default MaxAckPending, in the range of
// nats.go's Consume (up to 500 buffered, pulled again at half), so that a
// busy subscription pulls, and its acks go out, in batches large enough
// to keep server and client busy (see transport/nats/README.md for
// figures); still small enough that a member that dies takes few
// messages with it (they come back after AckWait, see the package doc)
// and that several dead members cannot fill MaxAckPending and stall the
// group.
func MaxHeld(n int) SubscribeOption {
	return SubscribeOption{"MaxHeld", func(s *subSettings) error {
		if n <= 0 {
			return fmt.Errorf("MaxHeld %d is not positive", n)
		}
		s.maxHeld = n
		return nil
	}}
}

// InactiveThreshold has the server delete the group's durable consumer
// once no member has pulled from it for d: for a group made for a while
// only (a tool's throwaway reader, such as busway tail's), which a process
// killed before its DeleteGroup would otherwise leave on the stream for
// good. A running member pulls all the time; keep d well above the
// longest a member may be away (a restart, a network cut): a deleted
// consumer is recreated by the next Subscribe at the stream's end
// (StartFrom), its position lost. Default 0: never.
func InactiveThreshold(d time.Duration) SubscribeOption {
	return positive("InactiveThreshold", d, func(s *subSettings) { s.inactive = d })
}

type subSettings struct {
	ackWait       time.Duration
	maxDeliver    int
	nakDelays     []time.Duration
	maxAckPending int
	maxHeld       int
	durable       string
	inactive      time.Duration
}

func (t *Transport) subSettings(topic string, opts transport.SubscribeOptions) (*subSettings, error) {
	s := t.s
	ss := &subSettings{ackWait: s.AckWait, maxDeliver: s.MaxDeliver, nakDelays: s.NakDelays, maxAckPending: s.MaxAckPending}
	for i, o := range opts.Specific {
		if o == nil || o.Transport() != Scheme {
			continue
		}
		so, ok := o.(SubscribeOption)
		if !ok || so.apply == nil {
			return nil, fmt.Errorf("%w: nats: Specific[%d] is a %T, not a nats.SubscribeOption", transport.ErrInvalidOptions, i, o)
		}
		if err := so.apply(ss); err != nil {
			return nil, fmt.Errorf("%w: nats: %v", transport.ErrInvalidOptions, err)
		}
	}
	w := opts.Workers()
	if ss.maxAckPending == 0 {
		ss.maxAckPending = max(2048, 64*w)
	}
	if ss.maxHeld == 0 {
		ss.maxHeld = min(max(256, 2*w), max(ss.maxAckPending/8, w))
	}
	if ss.maxHeld > ss.maxAckPending {
		return nil, fmt.Errorf("%w: nats: MaxHeld %d is above MaxAckPending %d (the server would never hand out that many)",
			transport.ErrInvalidOptions, ss.maxHeld, ss.maxAckPending)
	}
	if err := checkBackOff(s.BackOff, ss.maxDeliver); err != nil {
		return nil, err
	}
	if ss.durable == "" {
		ss.durable = durableName(opts.Group, topic)
	}
	return ss, nil
}

// durableName derives a consumer name from group and topic: one stream
// holds every topic, so a group needs one consumer per topic. '.' is not
// allowed in consumer names; the hash keeps names that differ only there
// (or in a truncated tail) apart.
func durableName(group, topic string) string {
	h := fnv.New32a()
	h.Write([]byte(group))
	h.Write([]byte{0})
	h.Write([]byte(topic))
	clean := func(s string) string {
		if len(s) > 100 {
			s = s[:100]
		}
		return strings.ReplaceAll(s, ".", "_")
	}
	return fmt.Sprintf("%s_%s_%08x", clean(group), clean(topic), h.Sum32())
}

// Subscribe creates or updates the group's durable pull consumer on
// topic's subject and consumes it in the background: a handler that
// returns nil gets its message acked, an error gets it Nak'ed with the
// NakDelays delay. Messages with the same Key run one at a time in order;
// up to Concurrency run at once. It returns once the consumer exists, so a
// message published afterwards is delivered even with StartLatest.
func (t *Transport) Subscribe(ctx context.Context, topic string, h transport.Handler, opts transport.SubscribeOptions) (transport.Subscription, error) {
	if t.closer.Closed() {
		return nil, t.errClosed("Subscribe")
	}
	if err := transport.ValidateSubscribe(topic, h, opts); err != nil {
		return nil, err
	}
	ss, err := t.subSettings(topic, opts)
	if err != nil {
		return nil, err
	}
	cons, err := t.ensureConsumer(ctx, topic, opts, ss, 0)
	if err != nil {
		return nil, err
	}
	workers := opts.Workers()
	sub := &subscription{
		t:         t,
		topic:     topic,
		opts:      opts,
		group:     opts.Group,
		h:         h,
		ss:        ss,
		ackPrefix: "$JS.ACK." + t.s.Stream + "." + ss.durable + ".",
		start:     time.Now(),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	sub.pull = puller{
		s:      sub,
		mu:     &sub.held.mu,
		refill: max(1, ss.maxHeld/2),
		next:   apiNext + t.s.Stream + "." + ss.durable,
		room:   make(chan struct{}, 1), // a pending "look again"; more would say nothing new
		reset:  make(chan struct{}, 1), // a pending "pull requests are void"; more would say nothing new
	}
	sub.held = heldSet{s: sub}
	sub.cons = consumerWatch{
		s:    sub,
		cons: cons,
		lost: make(chan struct{}, 1), // a pending "consumer lost" signal; more would say nothing new
	}
	sub.cons.ackFloor.Store(cons.CachedInfo().AckFloor.Stream)
	sub.deliver = newDelivery(sub, ctx, workers)
	if sub.pull.inbox, err = sub.pull.newInbox(); err != nil {
		sub.deliver.cancel()
		return nil, err
	}
	t.mu.Lock()
	if t.closer.Closed() {
		t.mu.Unlock()
		sub.deliver.cancel()
		_ = sub.pull.inbox.sub.Unsubscribe()
		<-sub.pull.inbox.end
		return nil, t.errClosed("Subscribe")
	}
	t.subs[sub] = struct{}{}
	t.mu.Unlock()
	sub.deliver.start()
	sub.wg.Add(2)
	go sub.pull.run()
	go sub.progress()
	return sub, nil
}

// subscription is one Subscribe's consumer, in four parts by role:
//
//   - pull (pull.go) asks the server for messages, never for more than
//     MaxHeld leaves room for, and receives them on its inbox;
//   - held (held.go) is the set of messages received and not finished,
//     which progress keeps in progress on the server;
//   - cons (consumer.go) is the consumer, watched and recreated when lost;
//   - deliver (deliver.go) runs the handlers: a key-ordered dispatcher
//     and Concurrency workers, which ack, nak or terminate each message.
//
// A message goes from pull's inbox (receive) into held and deliver's
// dispatcher (accept), and leaves held when its worker settled it.
type subscription struct {
	t     *Transport
	topic string
	opts  transport.SubscribeOptions
	group string
	h     transport.Handler
	ss    *subSettings
	// ackPrefix is how the ack subjects of the consumer's messages begin
	// (but for those of a JetStream domain): "$JS.ACK.<stream>.<consumer>.".
	ackPrefix string

	pull    puller
	held    heldSet
	cons    consumerWatch
	deliver *delivery

	// start is when Subscribe began: the origin of clock.
	start time.Time

	closing atomic.Bool    // Close began; stored under held's lock
	stop    chan struct{}  // closed when pull and progress are to end
	wg      sync.WaitGroup // pull and progress
	once    sync.Once
	done    chan struct{}
	err     error
}

// accept takes a message that arrived on the inbox into the held set and
// the dispatcher (or, while Close begins, keeps it to hand back), then
// counts it against its pull request. It never blocks: pull asked for no
// more than there is room for. Both under the held set's lock, which is
// pull's too; in that order: pull's kick, which looks at both without
// it, sees the message held before it sees its request's count go down,
// so it never asks for room the message takes.
func (s *subscription) accept(m *natsgo.Msg) {
	now := s.clock()
	s.held.mu.Lock()
	s.held.add(m, now, s.deliver)
	s.pull.received(now)
	s.held.mu.Unlock()
}

// clock returns the monotonic time since the subscription began, the
// time of its held messages and pull requests: one clock read, where
// time.Now reads the wall clock too (accept takes one for every message).
func (s *subscription) clock() time.Duration { return time.Since(s.start) }

// nakDelay is the delay of the Nak after the attempt-th delivery failed:
// NakDelays by attempt, the last one repeated.
func (ss *subSettings) nakDelay(attempt int) time.Duration {
	return backoff.Policy{Delays: ss.nakDelays}.Delay(attempt)
}

// Close stops pulling, hands back received messages that arrived as it
// began, lets the workers finish their queued and running messages until
// ctx ends (then cancels the handlers' context and hands back what did not
// start), acks what succeeded and flushes the acks to the server.
// Idempotent; concurrent calls wait for the first.
func (s *subscription) Close(ctx context.Context) error {
	s.once.Do(func() {
		s.held.startClosing()
		var ctxErr error
		giveUp := func() {
			if ctxErr == nil {
				ctxErr = ctx.Err()
				s.deliver.cancel() // the handlers see their context end
			}
		}
		// Stop pull and progress only after the workers: progress keeps
		// the queued messages in progress while they wait.
		finished := make(chan struct{})
		go func() {
			s.deliver.finish()
			s.held.wait()
			close(finished)
		}()
		// Meanwhile stop the inbox, then hand back what arrived on it
		// since Close began.
		s.pull.closeInbox(ctx)
		s.held.handBack()
		select {
		case <-finished:
		case <-ctx.Done():
			giveUp()
			<-finished
		}
		close(s.stop)
		s.wg.Wait()
		s.deliver.cancel()
		// Acks are fire-and-forget; a flush round trip makes sure the server
		// has them before Close returns, so a finished message is not
		// redelivered to the next subscription.
		if s.t.nc.IsConnected() {
			fctx, cancel := context.WithTimeout(context.Background(), s.t.s.ConnectTimeout)
			if err := s.t.nc.FlushWithContext(fctx); err != nil {
				s.t.log.Warn("nats: flush acks on close", "topic", s.topic, "group", s.group, "error", err)
			}
			cancel()
		}
		s.t.mu.Lock()
		delete(s.t.subs, s)
		s.t.mu.Unlock()
		s.err = ctxErr
		close(s.done)
	})
	<-s.done
	return s.err
}
