// Command busway is the operator's tool for a busway system: it shows the
// events that flow on a topic and repairs what failed, on any transport URL
// that busway.Open accepts, decoding busway's CloudEvents envelope.
//
//	go install github.com/busway/busway/cmd/busway@latest
//
//	busway tail URL TOPIC [--group G] [--from earliest|latest] [--type T] [--json] [--count N]
//	busway publish URL TOPIC --type T [--key K] [--data JSON | --data @file | --data -]
//	busway dlq list URL TOPIC [--json] [--group G] [--wait D]
//	busway dlq replay URL TOPIC (--id ID ... | --all) [--dry-run] [--group G] [--wait D]
//
// An event's attributes and data are set by whoever published it: in the text
// lines of tail and the table of dlq list, a character that is not
// printable (an ANSI escape sequence, a tab, a newline, a bidirectional
// override) is shown as its Go escape ("\x1b[2J"), never sent to the
// terminal as itself; --json output is JSON-escaped.
//
// # Groups
//
// tail reads in a group of its own, "busway-tail-<random>", so it takes
// nothing from the groups of running services, and deletes that group when
// it exits where the transport keeps groups (transport.GroupDeleter: the
// NATS durable consumer, the Kafka offsets). With --group it joins the group
// named, which then shares its messages with tail (and they are acked).
//
// # Dead letters
//
// middleware.DeadLetter publishes a message that failed for good to
// "<topic>.dlq" with headers naming the error, attempts, group, topic and
// time (middleware.HeaderDLQ*). The dead-letter topic is a log: reading it
// in a group removes nothing from it for other readers, and a broker log
// cannot drop one message out of the middle (Kafka), so "removing" a dead
// letter means recording that it was replayed:
//
//   - dlq list and dlq replay read the whole dead-letter topic from the
//     earliest message in a throwaway group ("busway-dlq-<random>", deleted
//     afterwards), until no message came for --wait (default 3s; on Kafka
//     the first wait includes joining the group). Nothing is consumed for
//     good, and no service's group is touched.
//   - dlq replay republishes each selected dead letter to its original topic
//     (header busway-dlq-topic, else TOPIC) without the dead-letter headers,
//     with its original event ID (ce_id, so middleware.Idempotent consumers
//     that handled the event skip it) and a new Message.ID (a replay is a
//     new publish of the event: NATS JetStream would drop a message with
//     the Message.ID of the original as a duplicate). Only after that
//     publish succeeded does it publish a replay marker to the dead-letter
//     topic: a message without body whose header busway-replayed names the
//     dead letter's Message.ID (busway-replayed-as the replay's, and
//     busway-replayed-at the time). list and replay skip dead letters that
//     have a marker, so a second replay does not send them again.
//   - Dead letters of one event (several groups failed it) are replayed as
//     one publish: every group gets the event again, and those that handled
//     it already skip it by its ID.
//   - If the marker's publish fails after the replay succeeded, the dead
//     letter stays listed and a later replay sends the event again, which
//     idempotent consumers absorb; the summary reports it.
//   - Two replays running at once may both replay a dead letter.
//
// Consumers of a dead-letter topic other than this tool see the markers:
// they carry no CloudEvents attributes and a busway-replayed header.
//
// # Exit codes
//
//	0  success (tail: stopped by Ctrl-C/SIGTERM or after --count events)
//	1  an error not listed below (a publish failed, ...)
//	2  usage: unknown command or flag, wrong arguments, bad --data
//	3  bad transport URL or option (malformed, unknown scheme or option)
//	4  broker unreachable (or not answering within --timeout)
//	5  the broker rejected the credentials
//	6  the topic does not exist and the transport may not create it
//	7  dlq replay did not replay all it was asked to (an --id not found or
//	   already replayed, a publish failed); the summary says which
//
// # Credentials
//
// A URL's user information and its token, password and secret options are
// never printed: the tool shows URLs with them replaced by "xxxxx" and
// scrubs them from the errors it prints.
package main
