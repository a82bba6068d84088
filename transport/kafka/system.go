package kafka

// System returns "kafka", the OpenTelemetry messaging.system of the
// transport (Kafka), which busway's tracing and metrics
// middleware report by default (transport.Systemer).
func (t *Transport) System() string { return "kafka" }
