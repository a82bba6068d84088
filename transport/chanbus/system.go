package chanbus

// System returns "chanbus", the OpenTelemetry messaging.system of the
// transport (in-process Go channels; not a broker), which busway's tracing and metrics
// middleware report by default (transport.Systemer).
func (t *Transport) System() string { return "chanbus" }
