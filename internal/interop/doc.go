// Package interop holds tests of the typed API (package bus) against
// foreign clients of the brokers: kcat, a librdkafka client, producing and
// consuming CloudEvents records on Kafka. They live apart because package
// bus must not import a transport and a transport must not import bus; this
// package has no non-test code.
package interop
