package kafka

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/busway/busway/transport"
	"github.com/busway/busway/transport/backoff"
	"github.com/busway/busway/transport/internal/dispatch"
)

// MaxInFlight is a subscribe option (in SubscribeOptions.Specific) bounding
// the messages a subscription has dispatched to its workers but not
// finished, across its partitions, and, per partition, the messages
// dispatched past its first unfinished one (the window in which handlers
// finish out of order): when either is reached, dispatching (and so
// fetching) pauses. It bounds memory, with the fetch responses a partition
// holds and has not dispatched yet (two, of at most Config.FetchMaxBytes
// each). Together with Config.CommitEvery it
// bounds the messages handled again after a crash: a
// partition pauses fetching while MaxInFlight + CommitEvery of its messages
// are past its committed offset, so a crash redelivers at most that many
// per partition. Default max(256, 8*Concurrency).
type MaxInFlight int

// Transport returns Scheme: the option belongs to this transport.
func (MaxInFlight) Transport() string { return Scheme }

// Subscribe joins the consumer group opts.Group on topic and handles its
// messages in the background with h until the Subscription is closed.
//
// Before it returns, the topic exists (created when provisioning allows)
// and the group has a position on every partition: for a group without
// committed offsets and StartLatest, the partitions' current end offsets
// are committed for it, so a message published after Subscribe returned is
// delivered even if the group has not finished joining. A partition added
// to the topic later (the group notices within kafka-go's partition watch
// interval, 5s, and rebalances) has no committed offset and starts at its
// earliest offset, whatever StartFrom says: all of it was published after
// Subscribe began, so none of it is skipped.
//
// Within each partition, messages are dispatched to per-key queues: those
// with the same key are handled one at a time in offset order, others in
// parallel up to opts.Concurrency handlers. A handler error retries the
// message in place after a backoff (Config.RetryBackoff, doubling up to
// RetryBackoffMax) and holds back only its key. Offsets are committed every
// Config.CommitInterval and when a partition is revoked or the subscription
// closes, and only up to the highest offset below which every message was
// handled successfully. Message.Attempt counts the attempts in this
// subscription (it starts at 1 again on another member or after a restart).
// Message.Meta carries the partition and offset. A worker reuses its
// Message, maps included, for its next message (a Handler must not keep it).
func (t *Transport) Subscribe(ctx context.Context, topic string, h transport.Handler, opts transport.SubscribeOptions) (transport.Subscription, error) {
	if err := transport.ValidateSubscribe(topic, h, opts); err != nil {
		return nil, err
	}
	workers := opts.Workers()
	maxInFlight := max(256, 8*workers)
	var hk hooks
	for _, o := range opts.Specific {
		switch o := o.(type) {
		case MaxInFlight:
			if o < 1 {
				return nil, fmt.Errorf("%w: kafka: MaxInFlight %d must be at least 1", transport.ErrInvalidOptions, int(o))
			}
			maxInFlight = int(o)
		case hooks:
			hk = o
		}
	}
	if t.closer.Closed() {
		return nil, errClosed("subscribe")
	}
	ids, err := t.partitions(ctx, topic)
	if err != nil {
		return nil, err
	}
	if err := t.resolveStart(ctx, topic, opts.Group, ids, opts.StartFrom); err != nil {
		return nil, err
	}

	log := t.cfg.log.With("topic", topic, "group", opts.Group)
	cg, err := kafkago.NewConsumerGroup(kafkago.ConsumerGroupConfig{
		ID:                opts.Group,
		Brokers:           t.cfg.Brokers,
		Dialer:            t.dialer,
		Topics:            []string{topic},
		HeartbeatInterval: t.cfg.HeartbeatInterval,
		SessionTimeout:    t.cfg.SessionTimeout,
		RebalanceTimeout:  t.cfg.RebalanceTimeout,
		// Partitions added to the topic join the group's assignment.
		WatchPartitionChanges: true,
		JoinGroupBackoff:      min(time.Second, t.cfg.RetryBackoffMax),
		// A partition without a committed offset starts at its earliest
		// offset, also with StartLatest: resolveStart has committed the end
		// of every partition the topic had when Subscribe began, so a
		// partition without one was added to the topic after that, and
		// everything in it was published after Subscribe began (starting it
		// at its end would skip what was produced before the group noticed
		// the partition).
		StartOffset: kafkago.FirstOffset,
		Timeout:     min(t.cfg.RequestTimeout, t.cfg.SessionTimeout),
		Logger:      kafkago.LoggerFunc(func(f string, a ...any) { log.Debug("kafka-go: " + fmt.Sprintf(f, a...)) }),
		ErrorLogger: kafkago.LoggerFunc(func(f string, a ...any) { log.Info("kafka-go: " + fmt.Sprintf(f, a...)) }),
	})
	if err != nil {
		return nil, fmt.Errorf("%w: kafka: %v", transport.ErrInvalidOptions, err)
	}
	s := &subscription{
		t:        t,
		topic:    topic,
		group:    opts.Group,
		h:        h,
		cg:       cg,
		log:      log,
		d:        dispatch.New[*job](dispatch.Config{Workers: workers}),
		inflight: newSemaphoreN(maxInFlight, workers),
		window:   maxInFlight,
		every:    t.cfg.CommitEvery,
		loopDone: make(chan struct{}),
		hooks:    hk,
	}
	s.runCtx, s.cancelRun = context.WithCancel(context.Background())
	s.stopCtx, s.stopFetch = context.WithCancel(context.Background())

	t.mu.Lock()
	if t.closer.Closed() {
		t.mu.Unlock()
		cg.Close()
		s.cancelRun()
		s.stopFetch()
		return nil, errClosed("subscribe")
	}
	t.subs[s] = struct{}{}
	t.mu.Unlock()
	s.workers.Add(workers)
	for range workers {
		go s.work(nil)
	}
	go s.loop()
	return s, nil
}

// resolveStart gives a StartLatest group without committed offsets the
// partitions' end offsets, so that the position exists before Subscribe
// returns. A group that already has members is left alone: they hold its
// position. Calls are serialized within the Transport; two processes
// subscribing one new group at the same moment can still race (Kafka has no
// conditional offset commit), which StartEarliest avoids.
func (t *Transport) resolveStart(ctx context.Context, topic, group string, ids []int, from transport.StartPosition) error {
	if from != transport.StartLatest {
		return nil
	}
	t.startMu.Lock()
	defer t.startMu.Unlock()
	ctx, cancel := t.withTimeout(ctx)
	defer cancel()
	// The partitions the topic has now: a partition this commits no start
	// for is later read from its earliest offset (see Subscribe), so a
	// stale count (metadata is cached) would replay a young partition.
	if n, err := t.freshPartitionCount(ctx, topic); err == nil && n > len(ids) {
		for id := len(ids); id < n; id++ {
			ids = append(ids, id)
		}
	} else if err != nil {
		t.cfg.log.Debug("kafka: fresh partition count unavailable; using cached metadata", "topic", topic, "err", err)
	}
	fetched, err := t.client.OffsetFetch(ctx, &kafkago.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: ids}})
	if err == nil {
		err = fetched.Error
	}
	if errors.Is(err, kafkago.GroupIdNotFound) {
		err, fetched = nil, &kafkago.OffsetFetchResponse{} // a new group (some brokers say so)
	}
	if err != nil {
		return fmt.Errorf("kafka: committed offsets of group %q: %w", group, classify(ctx, err))
	}
	have := make(map[int]bool)
	for _, p := range fetched.Topics[topic] {
		if p.Error == nil && p.CommittedOffset >= 0 {
			have[p.Partition] = true
		}
	}
	var reqs []kafkago.OffsetRequest
	for _, id := range ids {
		if !have[id] {
			reqs = append(reqs, kafkago.LastOffsetOf(id))
		}
	}
	if len(reqs) == 0 {
		return nil
	}
	listed, err := t.client.ListOffsets(ctx, &kafkago.ListOffsetsRequest{Topics: map[string][]kafkago.OffsetRequest{topic: reqs}})
	if err != nil {
		return fmt.Errorf("kafka: end offsets of topic %q: %w", topic, classify(ctx, err))
	}
	var commits []kafkago.OffsetCommit
	for _, p := range listed.Topics[topic] {
		if p.Error != nil {
			return fmt.Errorf("kafka: end offset of %s/%d: %w", topic, p.Partition, classify(ctx, p.Error))
		}
		commits = append(commits, kafkago.OffsetCommit{Partition: p.Partition, Offset: p.LastOffset})
	}
	res, err := t.client.OffsetCommit(ctx, &kafkago.OffsetCommitRequest{
		GroupID: group, GenerationID: -1, Topics: map[string][]kafkago.OffsetCommit{topic: commits},
	})
	if err == nil {
		for _, p := range res.Topics[topic] {
			if p.Error != nil {
				err = p.Error
				break
			}
		}
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, kafkago.UnknownMemberId), errors.Is(err, kafkago.IllegalGeneration), errors.Is(err, kafkago.RebalanceInProgress):
		// The group has members; they own its position.
		t.cfg.log.Debug("kafka: group already active; not setting its start position", "group", group, "topic", topic)
		return nil
	}
	return fmt.Errorf("kafka: setting the start position of group %q: %w", group, classify(ctx, err))
}

// freshPartitionCount asks a broker, bypassing the metadata caches, how
// many partitions topic has.
func (t *Transport) freshPartitionCount(ctx context.Context, topic string) (int, error) {
	var errs []error
	for _, b := range t.cfg.Brokers {
		conn, err := t.dialer.DialContext(ctx, "tcp", b)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if dl, ok := ctx.Deadline(); ok {
			_ = conn.SetDeadline(dl)
		}
		parts, err := conn.ReadPartitions(topic)
		conn.Close()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		return len(parts), nil
	}
	return 0, errors.Join(errs...)
}

type subscription struct {
	t     *Transport
	topic string
	group string
	h     transport.Handler
	cg    *kafkago.ConsumerGroup
	log   *slog.Logger

	inflight *semaphore   // dispatched, unfinished messages (MaxInFlight)
	workerN  atomic.Int64 // workers started: a worker's releaser of inflight
	window   int          // per partition, fetched messages past the commit position (MaxInFlight)
	every    int          // per partition, finished messages past the committed offset that ask for a commit (CommitEvery)
	// d orders the fetched messages by key for the Concurrency workers;
	// inflight bounds what it holds.
	d       *dispatch.Dispatcher[*job]
	workers sync.WaitGroup // the workers and the retry timers

	runCtx    context.Context // parent of handler contexts; canceled when Close's ctx ends
	cancelRun context.CancelFunc
	stopCtx   context.Context // canceled when Close begins: stop fetching
	stopFetch context.CancelFunc
	loopDone  chan struct{}
	running   sync.WaitGroup // functions started on generations

	commitMu sync.Mutex // serializes commits so that they never go backwards

	closeOnce sync.Once
	closeErr  error

	hooks hooks
}

// hooks are seams for this package's tests, injected at Subscribe as a
// SubscribeOptions.Specific value that only code in this package can build
// (the type is unexported). The zero value is the production behaviour.
type hooks struct {
	// finalCommit, when set, is asked before a stopping partition's last
	// commit; false skips the commit, as a killed process would.
	finalCommit func() bool
}

func (hooks) Transport() string { return Scheme }

// job is a fetched record on its way through the dispatcher. Its strings
// and value point into its fetch response (see decoder): a response's jobs
// are one array, reused with the response's buffer once all of them
// finished (see respBuf), and nothing writes their bytes.
//
// A job is 64 bytes, a cache line: the fetch loop writes one a record and
// a worker reads it. Its partition is its buffer's, and its value and
// headers are a pointer and a length each (see value and headers).
type job struct {
	key string // the record's key: the dispatcher's key and Message.Key
	off int64
	ms  int64    // the record's timestamp, in Unix milliseconds
	buf *respBuf // the response the job is of (its value is in it when not compressed)
	val *byte    // the value's first byte; nil for a null value
	hdr *header  // the first of nh headers
	n   uint32   // the value's length
	nh  uint32
}

// part is the partition j is of.
func (j *job) part() *partition { return j.buf.p }

// value is j's record's value, nil for a null value.
func (j *job) value() []byte {
	if j.val == nil {
		return nil
	}
	return unsafe.Slice(j.val, j.n)
}

// headers is j's record's headers.
func (j *job) headers() []header { return unsafe.Slice(j.hdr, j.nh) }

// setRecord sets j's value and headers.
func (j *job) setRecord(value []byte, headers []header) {
	j.val, j.n = unsafe.SliceData(value), uint32(len(value))
	j.hdr, j.nh = unsafe.SliceData(headers), uint32(len(headers))
}

// Close stops fetching, lets in-flight handlers finish until ctx ends (then
// cancels their contexts and waits for them to return), commits what
// finished and leaves the group. Messages that did not finish are
// redelivered to the group later. It returns ctx.Err() when ctx ended
// first. Idempotent. (kafka-go cannot interrupt a JoinGroup request in
// flight: during a rebalance, Close may wait up to Config.RebalanceTimeout
// for it.)
func (s *subscription) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		s.stopFetch()
		stop := context.AfterFunc(ctx, s.cancelRun)
		s.cg.Close() // ends the generation: partitions drain and commit; leaves the group
		<-s.loopDone
		s.running.Wait()
		s.stopWorkers()
		stop()
		s.cancelRun()
		s.t.mu.Lock()
		delete(s.t.subs, s)
		s.t.mu.Unlock()
		s.closeErr = ctx.Err()
	})
	return s.closeErr
}

// stopWorkers ends the workers once every partition drained (no message
// is queued or waiting for a retry any more) and waits for them.
func (s *subscription) stopWorkers() {
	s.d.Close()
	s.workers.Wait()
}

func (s *subscription) loop() {
	defer close(s.loopDone)
	for {
		gen, err := s.cg.Next(s.stopCtx)
		if err != nil {
			if errors.Is(err, kafkago.ErrGroupClosed) || s.stopCtx.Err() != nil {
				return
			}
			s.log.Warn("kafka: joining the consumer group failed; retrying", "err", classify(context.Background(), err))
			continue
		}
		assigned := gen.Assignments[s.topic]
		s.log.Debug("kafka: generation started", "generation", gen.ID, "member", gen.MemberID, "partitions", len(assigned))
		parts := make([]*partition, len(assigned))
		commitNow := make(chan struct{}, 1) // a partition asks commitLoop for a commit
		for i, a := range assigned {
			p := &partition{id: a.ID, idText: strconv.Itoa(a.ID), next: -1, committed: -1, draining: make(chan struct{}), advanced: make(chan struct{}, 1),
				every: int64(s.every), commitNow: commitNow}
			p.ctx, p.cancel = context.WithCancel(s.runCtx)
			parts[i] = p
			s.start(gen, func(ctx context.Context) { s.consume(ctx, gen, p, a.Offset) })
		}
		s.start(gen, func(ctx context.Context) { s.commitLoop(ctx, gen, parts, commitNow) })
	}
}

// start runs fn for the generation, counted in s.running: kafka-go does
// not wait for a function started on a generation that already ended.
func (s *subscription) start(gen *kafkago.Generation, fn func(context.Context)) {
	s.running.Add(1)
	gen.Start(func(ctx context.Context) {
		defer s.running.Done()
		fn(ctx)
	})
}

// partition is one assigned partition in one generation.
//
// Its fields are in two groups, each on cache lines of its own: those set
// when it is made, which every worker reads for every message; and those
// under mu, which the fetch loop and the workers write for every message.
// Sharing a line with mu made the workers' reads of idText and ctx cache
// misses.
type partition struct {
	id     int
	idText string          // id in decimal, for Message.Meta
	ctx    context.Context // handlers' context; canceled when its messages are abandoned
	cancel context.CancelFunc
	// draining is closed when the partition stops fetching: a failed
	// message then waits for the new owner instead of its backoff.
	draining  chan struct{}
	advanced  chan struct{}   // 1-buffered: the commit position moved, or a commit succeeded
	every     int64           // CommitEvery
	commitNow chan<- struct{} // 1-buffered, shared by the generation's partitions
	_         [64]byte

	mu sync.Mutex
	// unfinished counts the reserved messages that did not end (see end):
	// drain waits for none; idle, when not nil, is closed when there are
	// none. Counted here, under mu, which a worker takes for every message
	// anyway, not in a WaitGroup of its own (an atomic more a message).
	unfinished int
	idle       chan struct{}
	pending    []pendingOffset // fetched and not yet contiguous-done, in offset order
	head       int
	next       int64 // offset to commit: everything below it is done; -1 none
	committed  int64
	// done counts the messages below next (ever), doneCommitted those
	// below committed: done-doneCommitted finished messages wait for a
	// commit.
	done, doneCommitted int64
	// dead holds the keys whose message of this partition was abandoned:
	// the partition's later messages of those keys are skipped
	// (redelivered after it). A key's messages may come from several
	// partitions (a foreign partitioner, partitions added to the topic),
	// each with its own set. Only a stopping partition abandons.
	dead map[string]struct{}
}

type pendingOffset struct {
	off  int64
	done bool
}

// abandon gives up the partition's message of key (and, when key is not
// "", its later ones of that key): they are redelivered to the
// partition's next owner.
func (p *partition) abandon(key string) {
	if key == "" {
		return // a keyless message has nothing behind it
	}
	p.mu.Lock()
	if p.dead == nil {
		p.dead = make(map[string]struct{}, 1)
	}
	p.dead[key] = struct{}{}
	p.mu.Unlock()
}

// abandoned reports whether the partition's messages of key are given up.
func (p *partition) abandoned(key string) bool {
	if key == "" || !p.stopping() {
		return false // only a stopping partition abandons
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.dead[key]
	return ok
}

// stopping reports whether the partition drains or its messages are
// abandoned: a failed message is then left to its next owner.
func (p *partition) stopping() bool {
	return p.ctx.Err() != nil || isClosed(p.draining)
}

// roomLocked is how many more messages may be fetched before fetching must
// pause (none when it is not positive): until window messages are fetched
// past the first unfinished one, or window+every past the committed offset
// (the most a crash can make the group handle again).
func (p *partition) roomLocked(window int) int64 {
	pending := int64(len(p.pending) - p.head)
	return min(int64(window)-pending, int64(window)+p.every-(pending+p.done-p.doneCommitted))
}

// reserve adds the offsets of jobs, from the first on, to the partition's
// pending offsets until fetching must pause (see roomLocked), and returns
// how many it added: taking the lock once for a run of them, not once per
// message (the workers take it to finish each).
func (p *partition) reserve(jobs []job, window int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := int(max(0, min(int64(len(jobs)), p.roomLocked(window))))
	for i := range jobs[:n] {
		p.pending = append(p.pending, pendingOffset{off: jobs[i].off})
	}
	p.unfinished += n
	return n
}

// unreserve ends n reserved messages that will not be dispatched (fetching
// stopped first): their offsets stay unfinished, holding the commit
// position back.
func (p *partition) unreserve(n int) {
	if n == 0 {
		return
	}
	p.mu.Lock()
	p.endLocked(n)
	p.mu.Unlock()
}

// endLocked counts n reserved messages as ended. p.mu is held.
func (p *partition) endLocked(n int) {
	p.unfinished -= n
	if p.unfinished == 0 && p.idle != nil {
		close(p.idle)
		p.idle = nil
	}
}

// idleChan returns a channel closed once no reserved message is
// unfinished.
func (p *partition) idleChan() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.idle == nil {
		p.idle = make(chan struct{})
		if p.unfinished == 0 {
			close(p.idle)
		}
	}
	return p.idle
}

// end is done with j, a dispatched message of the partition: handled (or
// given up) when handled is true, its offset counts as finished for the
// commit position; else (skipped, abandoned) it holds the position back.
// j must not be touched afterwards: its buffer, and the job with it, may
// be reused (see respBuf). One taking of mu for what was a WaitGroup's
// Done, the buffer's reference count and finish.
func (p *partition) end(j *job, handled bool) {
	buf := j.buf
	p.mu.Lock()
	if handled {
		p.finishLocked(j.off)
	}
	p.endLocked(1)
	put := false
	if buf != nil {
		buf.refs--
		put = buf.refs == 0
	}
	p.mu.Unlock()
	if put {
		buf.put()
	}
}

// finishLocked marks off finished for the commit position. p.mu is held.
func (p *partition) finishLocked(off int64) {
	q := p.pending[p.head:]
	i := 0 // most finish at the head (in order)
	if len(q) > 0 && q[0].off != off {
		i = sort.Search(len(q), func(i int) bool { return q[i].off >= off })
	}
	if i < len(q) && q[i].off == off {
		q[i].done = true
	}
	moved := false
	for p.head < len(p.pending) && p.pending[p.head].done {
		p.next = p.pending[p.head].off + 1
		p.head++
		p.done++
		moved = true
	}
	if moved {
		select {
		case p.advanced <- struct{}{}:
		default:
		}
		if p.done-p.doneCommitted >= p.every && p.commitNow != nil {
			select {
			case p.commitNow <- struct{}{}:
			default: // a commit is asked for already
			}
		}
	}
	switch {
	case p.head == len(p.pending):
		p.pending, p.head = p.pending[:0], 0
	case p.head > 1024 && p.head > len(p.pending)/2:
		n := copy(p.pending, p.pending[p.head:])
		p.pending, p.head = p.pending[:n], 0
	}
}

// consume fetches one partition until its generation ends or the
// subscription closes, then drains it and commits.
func (s *subscription) consume(ctx context.Context, gen *kafkago.Generation, p *partition, offset int64) {
	conns := &fetchConns{}
	fctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.stopCtx, cancel)
	// A fetch the broker holds open, or a read of its records, fails at
	// once when fetching stops.
	interrupt := context.AfterFunc(fctx, conns.stop)
	s.fetch(fctx, p, offset, conns)
	stop()
	interrupt()
	cancel()
	conns.stop()
	s.drain(p)
	if s.hooks.finalCommit == nil || s.hooks.finalCommit() {
		s.commit(gen, p)
	}
	p.cancel()
	// Returning ends the generation: wait until it ends anyway (revocation
	// or Close), so that a drained partition does not trigger a rejoin.
	<-ctx.Done()
}

// fetchReadTimeout bounds reading a fetch response once it began (kafka-go's
// Reader's ReadBatchTimeout default).
const fetchReadTimeout = 10 * time.Second

// fetch reads partition p from offset and dispatches its records until ctx
// ends: one connection to the partition's leader, on which this package
// sends its own Fetch requests (see fetchConn) and decodes each response in
// place (see decoder), without kafka-go's Reader's goroutine and queue
// between the connection and the dispatcher. While a response's records are
// dispatched, the next fetch is on its way (see fetchAhead). Errors are
// retried as kafka-go's Reader retries them: after a backoff (RetryBackoff,
// doubling up to RetryBackoffMax), with a new connection to the leader
// when the error says the leader moved or the connection broke.
func (s *subscription) fetch(ctx context.Context, p *partition, offset int64, conns *fetchConns) {
	var conn *fetchConn
	var ahead <-chan fetched // the next fetch, sent on conn
	defer func() {
		if ahead != nil {
			<-ahead
		}
		if conn != nil {
			conn.kc.Close()
		}
	}()
	dialer := conns.dialer(s.t.dialer)
	retry := backoff.Policy{InitialInterval: s.t.cfg.RetryBackoff, MaxInterval: s.t.cfg.RetryBackoffMax}
	fails := 0 // consecutive failures: the next try waits for retry.Delay(fails)
	for ctx.Err() == nil {
		if fails > 0 && backoff.Sleep(ctx, retry.Delay(fails)) != nil {
			return
		}
		if conn == nil {
			c, off, err := s.dialLeader(ctx, dialer, conns, p.id, offset)
			if err != nil {
				if ctx.Err() == nil {
					s.log.Info("kafka: connecting to the partition's leader failed; retrying", "partition", p.id, "err", classify(context.Background(), err))
				}
				fails++
				continue
			}
			conn, offset = c, off
		}
		var f fetched
		if ahead != nil {
			f = <-ahead
			ahead = nil
		} else {
			f = s.fetchOnce(conn, p, offset)
		}
		offset = f.next // past what was read (and what compaction removed)
		err := f.err
		if err == nil && len(f.jobs) > 0 && ctx.Err() == nil {
			ahead = s.fetchAhead(conn, p, offset)
		}
		if s.dispatchAll(ctx, p, f.jobs) != nil {
			return
		}
		var ke kafkago.Error
		switch {
		case ctx.Err() != nil:
			return
		case err == nil:
			fails = 0
		case errors.Is(err, kafkago.OffsetOutOfRange):
			first, last, oerr := conn.kc.ReadOffsets()
			switch {
			case oerr != nil:
				conn.kc.Close()
				conn = nil
				fails++
			case offset < first:
				// The records up to first were deleted (retention).
				s.log.Warn("kafka: fetching before the partition's first offset; skipping to it", "partition", p.id, "offset", offset, "first", first)
				offset, fails = first, 0
			case offset < last:
				fails = 0
			default:
				fails++
			}
		case errors.As(err, &ke) && ke != kafkago.NotLeaderForPartition && ke != kafkago.UnknownTopicOrPartition:
			s.log.Warn("kafka: fetch failed; retrying", "partition", p.id, "err", classify(context.Background(), err))
			fails++
		case errors.Is(err, errMalformed), errors.Is(err, errors.ErrUnsupported):
			// What the response held is not readable (the records before
			// what was wrong are dispatched): fetch it again, on a new
			// connection in case the bytes broke on the way.
			s.log.Error("kafka: fetch response unreadable; fetching it again", "partition", p.id, "offset", offset, "err", err)
			conn.kc.Close()
			conn = nil
			fails++
		default:
			// The leader moved, or the connection broke: connect again.
			s.log.Info("kafka: fetch failed; connecting to the partition's leader again", "partition", p.id, "err", classify(context.Background(), err))
			conn.kc.Close()
			conn = nil
			fails++
		}
	}
}

// fetchConn is a connection to a partition's leader: kafka-go's Conn, for
// ListOffsets, and the connection under it, on which the fetch loop sends
// its Fetch requests and reads their responses itself (only one of the two
// has a request in flight at a time).
type fetchConn struct {
	kc  *kafkago.Conn
	nc  *stoppableConn
	id  int32  // the last request's correlation id
	req []byte // the request being sent
}

// fetched is a fetch's result: the records decoded, the offset to fetch
// next, and the error that ended the fetch (the records before it are in
// jobs).
type fetched struct {
	jobs []job
	next int64
	err  error
}

// fetchOnce fetches p's records from offset on conn and decodes them.
func (s *subscription) fetchOnce(conn *fetchConn, p *partition, offset int64) fetched {
	cfg := s.t.cfg
	conn.id++
	// As kafka-go's Conn: the broker holds the fetch open for part of
	// FetchMaxWait, the rest is the round trip's.
	wait := cfg.FetchMaxWait - min(time.Second, cfg.FetchMaxWait/4)
	conn.req = appendFetchRequest(conn.req[:0], conn.id, cfg.ClientID, s.topic, int32(p.id), offset,
		int32(min(wait.Milliseconds(), math.MaxInt32)), int32(min(cfg.FetchMaxBytes, math.MaxInt32)))
	nc := conn.nc
	defer nc.SetReadDeadline(time.Time{})
	_ = nc.SetReadDeadline(time.Now().Add(cfg.FetchMaxWait))
	if _, err := nc.Write(conn.req); err != nil {
		return fetched{next: offset, err: err}
	}
	var size [4]byte
	if _, err := io.ReadFull(nc.r, size[:]); err != nil {
		return fetched{next: offset, err: dontExpectEOF(err)}
	}
	n := int32(binary.BigEndian.Uint32(size[:]))
	if n < 4 {
		return fetched{next: offset, err: malformed("response size %d", n)}
	}
	if int64(n) > cfg.maxResponse {
		// Not read: the connection is closed and the fetch sent again.
		return fetched{next: offset, err: malformed("response of %d bytes declared, more than the %d bytes a fetch of FetchMaxBytes %d may return", n, cfg.maxResponse, cfg.FetchMaxBytes)}
	}
	_ = nc.SetReadDeadline(time.Now().Add(fetchReadTimeout))
	// The records' values are sub-slices of buf until their messages
	// finished (see respBuf).
	buf := getRespBuf(int(n))
	if _, err := io.ReadFull(nc.r, buf.b); err != nil {
		buf.put()
		return fetched{next: offset, err: dontExpectEOF(err)}
	}
	recs, err := parseFetchResponse(buf.b, conn.id, s.topic, int32(p.id))
	if err != nil {
		buf.put()
		return fetched{next: offset, err: err}
	}
	buf.p = p
	d := decoder{buf: buf, jobs: buf.jobs[:0]}
	next, err := d.decode(recs, offset)
	buf.jobs = d.jobs
	if len(d.jobs) == 0 {
		buf.put()
	} else {
		buf.refs = len(d.jobs) // from now on under p.mu (see partition.end)
	}
	return fetched{jobs: d.jobs, next: next, err: err}
}

// maxFetchResponse is the largest fetch response read, whose size the
// response declares before its buffer is allocated: without a bound, a
// corrupt or hostile size would allocate up to 2 GiB per partition. A
// response holds at most fetchMaxBytes of records, or one record batch
// larger than that (which the topic's max.message.bytes bounds), and a
// header of some bytes; the bound is at least minFetchResponseBound (as
// franz-go's BrokerMaxReadBytes), so that a topic whose batches are larger
// than this transport's FetchMaxBytes is read. Records larger still need a
// larger FetchMaxBytes: a response past the bound is an error (errMalformed)
// that names it, and the partition fetches again, skipping nothing.
func maxFetchResponse(fetchMaxBytes int) int64 {
	return max(minFetchResponseBound, int64(fetchMaxBytes)+fetchResponseRoom)
}

const (
	minFetchResponseBound = 100 << 20
	fetchResponseRoom     = 1 << 20 // the response's header and the batch header
)

// respBuf is the buffer a fetch response is read into, reused (through
// respBufs) once every message of the records sliced from it finished: a
// new one is zeroed by the runtime, which costs about as much as reading
// the response, and is garbage soon after. Reusing a buffer relies on
// transport.Handler's contract (a Handler keeps no Message or Body after it
// returned), as chanbus's pooled bodies do; keys and headers, as strings,
// are not in it (see decoder.strs). A job that never ends (not dispatched
// when fetching stopped, or its handler never returned) leaves its buffer
// to the garbage collector.
//
// The jobs decoded from the response are reused with it: their array, of a
// job a record, was otherwise allocated (and zeroed, and scanned by the
// garbage collector) for every response. A worker must not touch its job
// once it ended it (partition.end).
type respBuf struct {
	b    []byte
	p    *partition // the jobs'
	jobs []job
	// refs counts the jobs not ended; all are of one partition, whose mu
	// guards it once they are dispatched (see partition.end).
	refs int
}

var respBufs sync.Pool

// maxPooledResp bounds the buffers kept for reuse.
const maxPooledResp = 16 << 20

// getRespBuf returns a buffer of n bytes: respBufs' when it is large
// enough, else a new one, which takes the pooled one's jobs array (cleared:
// its jobs' values point into the old buffer).
func getRespBuf(n int) *respBuf {
	r, _ := respBufs.Get().(*respBuf)
	if r != nil && cap(r.b) >= n {
		r.b = r.b[:n]
		return r
	}
	nr := &respBuf{b: make([]byte, n)}
	if r != nil {
		clear(r.jobs[:cap(r.jobs)])
		nr.jobs = r.jobs[:0]
	}
	return nr
}

func (r *respBuf) put() {
	r.p = nil
	if cap(r.b) > maxPooledResp {
		return
	}
	if cap(r.jobs)*int(unsafe.Sizeof(job{})) > maxPooledResp {
		r.jobs = nil // a response of many small records
	}
	respBufs.Put(r)
}

// fetchAhead starts the next fetch on conn in a goroutine of its own and
// returns the channel of its result: the broker prepares and sends it while
// the last response's records are dispatched, so that a partition does not
// wait a round trip between responses. What is held before a handler starts
// is then a response per partition being dispatched (at most
// FetchMaxBytes, or one record batch when that is larger), the next one,
// and MaxInFlight dispatched messages (with the responses they are in).
// The goroutine ends once the response was read, or the fetch failed (at
// once when fetching stops: see fetchConns).
func (s *subscription) fetchAhead(conn *fetchConn, p *partition, offset int64) <-chan fetched {
	c := make(chan fetched, 1)
	go func() { c <- s.fetchOnce(conn, p, offset) }()
	return c
}

// dispatchRun is how many of a response's messages the fetch loop
// reserves and dispatches at a time (one partition lock and one
// dispatcher AddAll for each run, not per message).
const dispatchRun = 64

// dispatchAll dispatches jobs, in order, pausing while the partition or the
// subscription has no room (MaxInFlight, CommitEvery). It fails only when
// ctx ends.
func (s *subscription) dispatchAll(ctx context.Context, p *partition, jobs []job) error {
	for len(jobs) > 0 {
		// A run of at most dispatchRun: reserved and not yet dispatched, a
		// message holds back the commit position as a dispatched one does.
		n := p.reserve(jobs[:min(len(jobs), dispatchRun)], s.window)
		if n == 0 {
			select {
			case <-p.advanced:
			case <-ctx.Done():
				return ctx.Err()
			}
			continue
		}
		if err := ctx.Err(); err != nil {
			p.unreserve(n)
			return err
		}
		if k, err := s.dispatch(ctx, p, jobs[:n]); err != nil {
			p.unreserve(n - k)
			return err
		}
		jobs = jobs[n:]
	}
	return nil
}

// dialLeader connects to the leader of the topic's partition id, through
// the first broker that answers, and returns the connection and offset
// resolved (FirstOffset and an offset before the partition's first one
// mean its first, LastOffset its last). An offset past the partition's end
// is left as it is: its fetch fails with OffsetOutOfRange, and is tried
// again later.
func (s *subscription) dialLeader(ctx context.Context, dialer *kafkago.Dialer, conns *fetchConns, id int, offset int64) (*fetchConn, int64, error) {
	var errs []error
	for _, b := range s.t.cfg.Brokers {
		kc, err := dialer.DialLeader(ctx, "tcp", b, s.topic, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		nc := conns.takeLast()
		if nc == nil {
			kc.Close()
			return nil, 0, errors.New("kafka: the leader's connection was not dialed through the fetch dialer")
		}
		if dl, ok := ctx.Deadline(); ok {
			_ = kc.SetDeadline(dl)
		}
		first, last, err := kc.ReadOffsets()
		if err == nil {
			err = checkFetchVersion(kc)
		}
		if err != nil {
			kc.Close()
			return nil, 0, err
		}
		switch {
		case offset == kafkago.FirstOffset, offset < first:
			offset = first
		case offset == kafkago.LastOffset:
			offset = last
		}
		_ = kc.SetDeadline(time.Time{})
		return &fetchConn{kc: kc, nc: nc}, offset, nil
	}
	return nil, 0, errors.Join(errs...)
}

// checkFetchVersion fails when the broker on kc does not take Fetch
// fetchVersion (a broker before Kafka 0.11).
func checkFetchVersion(kc *kafkago.Conn) error {
	vs, err := kc.ApiVersions()
	if err != nil {
		return err
	}
	for _, v := range vs {
		if v.ApiKey == apiKeyFetch {
			if v.MinVersion <= fetchVersion && fetchVersion <= v.MaxVersion {
				return nil
			}
			return fmt.Errorf("kafka: broker %s takes Fetch v%d-v%d, not v%d (Kafka 0.11 or later is needed): %w",
				kc.RemoteAddr(), v.MinVersion, v.MaxVersion, fetchVersion, errors.ErrUnsupported)
		}
	}
	return fmt.Errorf("kafka: broker %s takes no Fetch requests: %w", kc.RemoteAddr(), errors.ErrUnsupported)
}

// drain waits for the partition's dispatched messages, at most DrainTimeout
// or until Close's ctx ends; then the rest are abandoned (their handlers'
// contexts canceled, queued ones skipped) and it waits for the handlers to
// return.
func (s *subscription) drain(p *partition) {
	close(p.draining)
	done := p.idleChan()
	timer := time.NewTimer(s.t.cfg.DrainTimeout)
	defer timer.Stop()
	select {
	case <-done:
		return
	case <-timer.C:
		s.log.Warn("kafka: partition did not drain in time; its unfinished messages will be redelivered", "partition", p.id)
	case <-p.ctx.Done():
	}
	p.cancel()
	<-done
}

// commitLoop commits every CommitInterval, and when a partition has
// CommitEvery finished messages past its committed offset.
func (s *subscription) commitLoop(ctx context.Context, gen *kafkago.Generation, parts []*partition, now <-chan struct{}) {
	tick := time.NewTicker(s.t.cfg.CommitInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-now:
		}
		s.commit(gen, parts...)
	}
}

// commit commits, for each partition, the offset below which every message
// was handled, when it moved since the last commit.
func (s *subscription) commit(gen *kafkago.Generation, parts ...*partition) {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	var offs map[int]int64
	dones := make([]int64, len(parts))
	for i, p := range parts {
		p.mu.Lock()
		if p.next > p.committed {
			if offs == nil {
				offs = make(map[int]int64, len(parts))
			}
			offs[p.id] = p.next
			dones[i] = p.done
		}
		p.mu.Unlock()
	}
	if len(offs) == 0 {
		return
	}
	if err := gen.CommitOffsets(map[string]map[int]int64{s.topic: offs}); err != nil {
		s.log.Warn("kafka: commit failed; the messages after the last commit may be delivered again", "generation", gen.ID, "err", classify(context.Background(), err))
		return
	}
	for i, p := range parts {
		if off, ok := offs[p.id]; ok {
			p.mu.Lock()
			p.committed, p.doneCommitted = off, dones[i]
			p.mu.Unlock()
			select { // fetching may wait for this commit
			case p.advanced <- struct{}{}:
			default:
			}
		}
	}
}
