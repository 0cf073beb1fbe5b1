//! Counters the bus keeps about what crossed it, and what it refused.
//! Nothing dropped is dropped silently: every refusal has a counter here,
//! and the daemons publish them (`tend status`, metrics).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* $field:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Default)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: AtomicU64,)*
        }

        impl $name {
            /// Every counter with its name, for status and metrics.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// What the bus counted.
    pub struct BusStats {
        /// Frames that arrived on any socket.
        frames_in,
        /// Frames sent.
        frames_out,
        /// Frames that could not be parsed (garbage, truncated, oversized,
        /// wrong version or kind).
        frames_bad,
        /// Frames whose body did not decode as the protobuf expected.
        frames_undecodable,
        /// Sealed frames for a session the receiver does not know.
        frames_unknown_session,
        /// Frames refused as replays (counter not increasing).
        frames_replayed,
        /// Sealed frames that failed authentication: forged, altered, or
        /// sealed with another key.
        frames_forged,
        /// Handshakes refused: bad signature, invalid name, key not
        /// accepted (pending, rejected, denied), wrong master.
        handshakes_refused,
        /// Events refused for their content (tag, minion, data).
        events_refused,
        /// Events accepted off the wire.
        events_in,
        /// Sessions opened.
        sessions_opened,
        /// Sessions ended by a heartbeat timeout.
        sessions_expired,
        /// Sessions ended by the minion's goodbye (it was stopping).
        sessions_closed,
        /// Replies that arrived after their request timed out.
        replies_late,
        /// Replies refused: to a request sent to another peer, or to no
        /// request at all (a guessed id).
        replies_refused,
        /// Outbound messages refused because a queue was full.
        queue_full,
        /// TCP connections shut down on arrival: over the master's total,
        /// or too many from one address still in the ZeroMQ greeting; and
        /// connections the listener could not accept (out of descriptors).
        connections_refused,
        /// Hellos from keys not seen before, dropped because their source
        /// address sent more than its rate (the peer retries).
        hellos_throttled,
        /// Clear messages (handshake answers, Rehellos: anyone on the path
        /// can write them) a minion dropped because their queue was full;
        /// sealed ones have a queue of their own.
        clear_dropped,
    }
}

impl BusStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts something refused and says why in the log: the first ten of
    /// each kind, then at every power of two, so a flood of garbage is
    /// visible without flooding the log.
    pub(crate) fn refuse(counter: &AtomicU64, port: &'static str, reason: &dyn std::fmt::Display) {
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= 10 || n.is_power_of_two() {
            tracing::warn!(port, refused_so_far = n, "refused: {reason}");
        }
    }
}
