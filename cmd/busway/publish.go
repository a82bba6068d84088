package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/busway/busway/bus"
	"github.com/busway/busway/transport"
)

func (a *app) publishCmd() *cobra.Command {
	var (
		typ, key, data, source, subject, schema string
		headers                                 []string
	)
	cmd := &cobra.Command{
		Use:   "publish URL TOPIC --type T",
		Short: "Publish one event with a CloudEvents envelope",
		Long: `publish sends one event to TOPIC with busway's envelope (CloudEvents 1.0
binary mode: a new UUIDv7 id, the type, source, time, partition key; the data
as application/json), so busway consumers decode it as one of their own.
--data is JSON given inline, @file to read a file, or - to read stdin.
It prints the event's ID.`,
		Example: `  busway publish nats://127.0.0.1:4222 orders --type order.created --key 42 --data '{"id":"42","total":99.5}'
  busway publish kafka://localhost:9092 orders --type order.created --data @order.json`,
		Args: args("URL", "TOPIC"),
		RunE: func(cmd *cobra.Command, argv []string) error {
			if typ == "" {
				return usageError{fmt.Errorf("--type is required (the event type, e.g. order.created)")}
			}
			body, err := a.readData(data)
			if err != nil {
				return err
			}
			extra := make(map[string]string, len(headers))
			for _, h := range headers {
				k, v, ok := strings.Cut(h, "=")
				if !ok || k == "" {
					return usageError{fmt.Errorf("--header %q: want name=value", h)}
				}
				if how, envelope := envelopeHeaders[k]; envelope {
					return usageError{fmt.Errorf("--header %q: %s is an envelope attribute: %s", h, k, how)}
				}
				extra[k] = v
			}
			return a.publish(cmd.Context(), argv[0], argv[1], bus.Envelope{
				Type: typ, Source: source, Subject: subject, Key: key, DataSchema: schema, Header: extra,
				ContentType: "application/json",
			}, body)
		},
	}
	f := cmd.Flags()
	f.StringVar(&typ, "type", "", "the event type (ce_type), required")
	f.StringVar(&key, "key", "", "the partition key: events with one key are handled in order")
	f.StringVar(&data, "data", "", "the event data: JSON, @file or - (stdin); none: an event without data")
	f.StringVar(&source, "source", "busway-cli", "the event source (ce_source)")
	f.StringVar(&subject, "subject", "", "the event subject (ce_subject)")
	f.StringVar(&schema, "dataschema", "", "the URI of the data's schema (ce_dataschema)")
	f.StringArrayVar(&headers, "header", nil, "an extra header name=value (repeatable)")
	return cmd
}

// envelopeHeaders are the headers that publish writes itself, each with
// the way to set it: a --header would be ignored (bus.EncodeEnvelope's
// fields win).
var envelopeHeaders = map[string]string{
	transport.HeaderID:              "publish sets a new one",
	transport.HeaderTime:            "publish sets the current time",
	transport.HeaderSpecVersion:     "publish writes 1.0",
	transport.HeaderType:            "use --type",
	transport.HeaderSource:          "use --source",
	transport.HeaderSubject:         "use --subject",
	transport.HeaderPartitionKey:    "use --key",
	transport.HeaderDataSchema:      "use --dataschema",
	transport.HeaderContentType:     "--data is JSON, sent as application/json",
	transport.HeaderDataContentType: "--data is JSON, sent as application/json",
}

// readData returns the JSON of --data, checked.
func (a *app) readData(data string) ([]byte, error) {
	var body []byte
	switch {
	case data == "":
		return nil, nil
	case data == "-":
		b, err := io.ReadAll(a.stdin)
		if err != nil {
			return nil, fmt.Errorf("--data -: reading stdin: %w", err)
		}
		body = b
	case strings.HasPrefix(data, "@"):
		b, err := os.ReadFile(data[1:])
		if err != nil {
			return nil, usageError{fmt.Errorf("--data %s: %w", data, err)}
		}
		body = b
	default:
		body = []byte(data)
	}
	if !json.Valid(body) {
		var v any
		err := json.Unmarshal(body, &v)
		return nil, usageError{fmt.Errorf("--data is not JSON: %v", err)}
	}
	return body, nil
}

func (a *app) publish(ctx context.Context, rawURL, topic string, env bus.Envelope, body []byte) error {
	m, err := bus.EncodeEnvelope(env, body)
	if err != nil {
		return usageError{err}
	}
	t, err := a.connect(ctx, rawURL)
	if err != nil {
		return err
	}
	defer a.closeTransport(t)
	pctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	if err := t.Publish(pctx, topic, m); err != nil {
		if _, named := errors.AsType[*transport.PublishError](err); named {
			return err // it says "publish to <topic>: ..."
		}
		return fmt.Errorf("publish to %q: %w", topic, err)
	}
	fmt.Fprintln(a.stdout, m.Header[transport.HeaderID])
	return nil
}
