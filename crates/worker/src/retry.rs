//! The worker's retry policies (`backon`): how often and how long it tries again after a
//! transient failure, in one place.

use std::time::Duration;

use backon::ExponentialBuilder;

/// Uploads of build output: 3 more tries after the first, 400 ms, 800 ms, 1.6 s apart (with
/// jitter), on transport errors and 5xx answers only.
pub fn uploads() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(400))
        .with_factor(2.0)
        .with_max_times(3)
        .with_jitter()
}

/// Reconnecting to the server: forever, from 100 ms doubling up to 2.5 s between tries, plus
/// jitter of up to as much again (so at most 5 s, and many workers do not reconnect in step
/// after a server restart).
pub fn reconnect() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_millis(2500))
        .with_factor(2.0)
        .without_max_times()
        .with_jitter()
}
