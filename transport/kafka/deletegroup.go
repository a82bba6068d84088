package kafka

import (
	"context"
	"errors"
	"fmt"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/busway/busway/transport"
)

var _ transport.GroupDeleter = (*Transport)(nil)

// DeleteGroup deletes group's committed offsets of topic (OffsetDelete,
// Kafka 2.4+) and then, when the group has no offsets left on any topic,
// the group itself (DeleteGroups): a Kafka group spans topics, and its
// positions on other topics are not topic's to remove. A missing topic or
// group is not an error. The broker refuses while a member of the group
// still consumes topic: close the subscriptions first.
func (t *Transport) DeleteGroup(ctx context.Context, topic, group string) error {
	if t.closer.Closed() {
		return errClosed("delete group")
	}
	if err := transport.ValidateTopic(topic); err != nil {
		return err
	}
	if err := transport.ValidateName("Group", group); err != nil {
		return err
	}
	leaders, err := t.lookup(ctx, topic, false)
	if errors.Is(err, transport.ErrTopicNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	ctx, cancel := t.withTimeout(ctx)
	defer cancel()
	ids := make([]int, len(leaders))
	for i := range ids {
		ids[i] = i
	}
	res, err := t.client.OffsetDelete(ctx, &kafkago.OffsetDeleteRequest{GroupID: group, Topics: map[string][]int{topic: ids}})
	if err == nil {
		err = res.Error
		for _, p := range res.Topics[topic] {
			if err == nil && p.Error != nil && !errors.Is(p.Error, kafkago.UnknownTopicOrPartition) {
				err = p.Error
			}
		}
	}
	if errors.Is(err, kafkago.GroupIdNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("kafka: delete offsets of group %q on topic %q: %w", group, topic, classify(ctx, err))
	}
	// Remove the group when nothing of it is left.
	fetched, err := t.client.OffsetFetch(ctx, &kafkago.OffsetFetchRequest{GroupID: group})
	if err == nil {
		err = fetched.Error
	}
	if errors.Is(err, kafkago.GroupIdNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("kafka: committed offsets of group %q: %w", group, classify(ctx, err))
	}
	for _, ps := range fetched.Topics {
		for _, p := range ps {
			if p.Error == nil && p.CommittedOffset >= 0 {
				return nil // the group still has a position elsewhere
			}
		}
	}
	dres, err := t.client.DeleteGroups(ctx, &kafkago.DeleteGroupsRequest{GroupIDs: []string{group}})
	if err == nil {
		err = dres.Errors[group]
	}
	if err == nil || errors.Is(err, kafkago.GroupIdNotFound) {
		return nil
	}
	return fmt.Errorf("kafka: delete group %q: %w", group, classify(ctx, err))
}
