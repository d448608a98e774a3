//! Tracing spans of the queue's operations, named and attributed by OpenTelemetry's messaging
//! conventions, so that users of `tracing-opentelemetry` get conventional telemetry without
//! code of ours: `messaging.system = "jobdb"`, `messaging.destination.name` (the queue),
//! `messaging.operation.type` (`create` for an enqueue, `receive` for a claim, `process` for
//! a handler's run, `settle` for a result), `messaging.operation.name`, `messaging.message.id`
//! (the job's id, where one is known), and `otel.name` / `otel.kind`, which
//! `tracing-opentelemetry` takes for the span's name ("claim emails") and kind. DEBUG level:
//! free unless a subscriber asks for them.

/// What the span is about.
#[derive(Clone, Copy)]
pub(crate) enum Op {
    /// An enqueue (a producer span).
    Create(&'static str),
    /// A claim (consumer).
    Receive,
    /// A handler running a job (consumer).
    Process,
    /// Recording a result (consumer).
    Settle(&'static str),
}

/// The span of one operation on `queue` (empty when the caller does not know it, as a
/// result recorded by lease does not).
pub(crate) fn span(op: Op, queue: &str, message_id: Option<i64>) -> tracing::Span {
    let (name, kind, otel_kind) = match op {
        Op::Create(name) => (name, "create", "producer"),
        Op::Receive => ("claim", "receive", "consumer"),
        Op::Process => ("process", "process", "consumer"),
        Op::Settle(name) => (name, "settle", "consumer"),
    };
    let span = tracing::debug_span!(
        "jobdb.queue",
        otel.name = tracing::field::Empty,
        otel.kind = otel_kind,
        messaging.system = "jobdb",
        messaging.operation.type = kind,
        messaging.operation.name = name,
        messaging.destination.name = queue,
        messaging.message.id = tracing::field::Empty,
    );
    if !span.is_disabled() {
        span.record("otel.name", format!("{name} {queue}").trim_end());
        if let Some(id) = message_id {
            span.record("messaging.message.id", id);
        }
    }
    span
}
