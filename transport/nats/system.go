package nats

// System returns "nats", the OpenTelemetry messaging.system of the
// transport (NATS JetStream), which busway's tracing and metrics
// middleware report by default (transport.Systemer).
func (t *Transport) System() string { return "nats" }
