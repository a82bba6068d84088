package nats

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/busway/busway/transport"
)

var _ transport.GroupDeleter = (*Transport)(nil)

// DeleteGroup deletes the durable consumer of group on topic (the name
// Subscribe derives, "<group>_<topic>_<hash>"; a consumer named with the
// Durable option is the caller's to delete, through JetStream). A missing
// consumer is not an error. Close the group's subscriptions first: a
// running subscription recreates its lost consumer.
func (t *Transport) DeleteGroup(ctx context.Context, topic, group string) error {
	if t.closer.Closed() {
		return t.errClosed("DeleteGroup")
	}
	if err := transport.ValidateTopic(topic); err != nil {
		return err
	}
	if err := transport.ValidateName("Group", group); err != nil {
		return err
	}
	ctx, cancel := t.withTimeout(ctx)
	defer cancel()
	name := durableName(group, topic)
	err := t.js.DeleteConsumer(ctx, t.s.Stream, name)
	if err == nil || errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil
	}
	return t.apiError("delete consumer "+name, err)
}
