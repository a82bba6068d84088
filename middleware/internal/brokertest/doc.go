// Package brokertest holds the middleware tests that need a broker
// transport (NATS JetStream, Kafka). They live apart so that package
// middleware's own tests need no broker client and stay fast; this package
// has no non-test code.
package brokertest
