//! Sealing and opening: once each, out of order within the window,
//! nothing altered, nothing from another session or channel.

use super::testkit::{self, open};
use super::*;
use crate::frame::decode;

fn pair() -> (Session, Session) {
    testkit::pair(9)
}

#[test]
fn sealed_frames_open_once_even_out_of_order() {
    let (tx, rx) = pair();
    let f1 = tx.seal(Channel::Up, b"one");
    let f2 = tx.seal(Channel::Up, b"two");
    assert!(!f2.windows(3).any(|w| w == b"two"), "the body is encrypted");
    assert_eq!(open(&rx, Channel::Up, &f2).unwrap(), b"two");
    // f1 arrives late (sealed first, sent second): still genuine.
    assert_eq!(open(&rx, Channel::Up, &f1).unwrap(), b"one");
    // Either frame again is a replay.
    for f in [&f1, &f2] {
        assert!(matches!(
            open(&rx, Channel::Up, f),
            Err(BusError::Replay { .. })
        ));
    }
    // Channels count separately.
    let e1 = tx.seal(Channel::Events, b"e");
    assert_eq!(open(&rx, Channel::Events, &e1).unwrap(), b"e");
}

#[test]
fn a_frame_older_than_the_window_is_refused_and_one_at_its_edge_is_not() {
    let (tx, rx) = pair();
    let frames: Vec<_> = (0..=REPLAY_WINDOW)
        .map(|i| tx.seal(Channel::Down, &i.to_be_bytes()))
        .collect();
    // Counter REPLAY_WINDOW + 1 arrives first; counter 2 is the oldest
    // still inside the window, counter 1 is just outside it.
    let newest = frames.last().unwrap();
    assert!(open(&rx, Channel::Down, newest).is_ok());
    assert!(open(&rx, Channel::Down, &frames[1]).is_ok());
    assert!(matches!(
        open(&rx, Channel::Down, &frames[0]),
        Err(BusError::Replay { counter: 1, .. })
    ));
    assert!(matches!(
        open(&rx, Channel::Down, &frames[1]),
        Err(BusError::Replay { .. })
    ));
}

#[test]
fn frames_reordered_between_sealing_and_sending_all_open_exactly_once() {
    // What the master does: requests and acknowledgements are sealed on
    // tokio tasks and queue in the pipe to the socket thread, while the
    // socket thread seals heartbeat answers and sends them at once, so
    // they overtake whatever is queued. Every frame opens once.
    let (tx, rx) = pair();
    let mut pipe = std::collections::VecDeque::new();
    let mut wire = Vec::new();
    for i in 0..20_000u32 {
        let f = tx.seal(Channel::Down, &i.to_be_bytes());
        if i % 5 == 0 {
            wire.push(f); // a heartbeat answer, sent at once
        } else {
            pipe.push_back(f); // a request, queued
        }
        // The socket thread drains the pipe now and then, in bursts.
        if i % 97 == 0 {
            wire.extend(pipe.drain(..));
        }
    }
    wire.extend(pipe.drain(..));
    let mut bodies = std::collections::HashSet::new();
    for f in &wire {
        let body = open(&rx, Channel::Down, f).expect("an honest frame opens");
        assert!(bodies.insert(body), "a body opened twice");
    }
    assert_eq!(bodies.len(), 20_000);
    for f in &wire {
        assert!(matches!(
            open(&rx, Channel::Down, f),
            Err(BusError::Replay { .. })
        ));
    }
}

#[test]
fn the_window_agrees_with_a_set_of_every_counter_seen() {
    // Counters drawn around a moving top, across word boundaries and
    // jumps larger than the window, checked against the plain rule:
    // accepted iff never seen and less than REPLAY_WINDOW below the
    // highest seen.
    let mut window = ReplayWindow::default();
    let mut seen = std::collections::HashSet::new();
    let mut top = 0u64;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..200_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let counter = match x % 10 {
            0 => top + 1 + x % (3 * REPLAY_WINDOW),
            1..=3 => top + 1 + x % 70,
            _ => top.saturating_sub(x % (REPLAY_WINDOW + 80)),
        };
        let expected = counter > 0 && !seen.contains(&counter) && counter + REPLAY_WINDOW > top;
        assert_eq!(
            window.accept(counter).is_ok(),
            expected,
            "counter {counter}, top {top}"
        );
        if expected {
            seen.insert(counter);
            top = top.max(counter);
        }
    }
}

#[test]
fn any_flipped_bit_is_refused() {
    let (tx, rx) = pair();
    let frame = tx.seal(Channel::Down, b"apply states");
    for i in 0..frame.len() * 8 {
        let mut bad = frame.clone();
        bad[i / 8] ^= 1 << (i % 8);
        let Ok((h, b)) = decode(&bad, 1024) else {
            continue;
        };
        assert!(
            rx.open(Channel::Down, &h, b).is_err(),
            "bit {i} flipped was accepted"
        );
    }
    let (h, b) = decode(&frame, 1024).unwrap();
    assert!(
        rx.open(Channel::Down, &h, b).is_ok(),
        "the untouched frame still opens"
    );
}

#[test]
fn a_frame_from_another_session_or_channel_is_refused() {
    let (tx, _) = pair();
    let other = Session::new(
        9,
        &Keys {
            up: [3; 32],
            down: [4; 32],
        },
    );
    let frame = tx.seal(Channel::Up, b"x");
    let (h, b) = decode(&frame, 1024).unwrap();
    assert!(matches!(
        other.open(Channel::Up, &h, b),
        Err(BusError::Forged)
    ));
    let (_, rx) = pair();
    assert!(matches!(
        rx.open(Channel::Events, &h, b),
        Err(BusError::Forged)
    ));
}
