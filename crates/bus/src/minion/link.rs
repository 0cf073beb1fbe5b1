//! The session task: the signed handshake, retried with exponential
//! backoff and jitter; the master's key checked against the pin; waiting
//! while this minion's key is pending (on the would-be session, which the
//! master opens the moment an operator accepts the key); then heartbeats
//! until the master goes quiet or no longer knows the session, and over
//! again; and a goodbye when the minion stops.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prost::Message;
use tend_proto::now_us;
use tend_proto::v1::{Goodbye, Heartbeat, MinionMessage, PeerKind, minion_message};
use tokio::time::Instant;

use super::{Control, Inbox, MinionInbound, Shared};
use crate::actor::SocketThread;
use crate::frame::handshake_frame;
use crate::handshake::Initiator;
use crate::identity::PinError;
use crate::session::{Channel, Session};
use crate::stats::BusStats;

/// How long the first hello waits for its challenge before another is
/// sent; later ones back off to LAST_RETRY.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const LAST_RETRY: Duration = Duration::from_secs(5);
/// While its key waits for an operator, a minion asks again this often
/// (an accept opens the session it waits on at once; asking again covers
/// a master that restarted meanwhile).
const PENDING_RETRY: Duration = Duration::from_secs(2);
/// How long a goodbye waits for the master's answer, at most: the minion
/// is stopping, and the presence timeout covers a goodbye that was lost.
const GOODBYE_WAIT: Duration = Duration::from_millis(500);
/// A rejected minion, or one facing the wrong master, asks again this often.
const REFUSED_RETRY: Duration = Duration::from_secs(30);

/// The least time a sealed answer has after a clear Rehello (see
/// `heartbeat`): room for a busy master on a loaded machine.
const DOUBT_MIN: Duration = Duration::from_millis(250);

/// How a handshake attempt ended.
enum Attempt {
    Open(Arc<Session>, Duration),
    /// Try again after this long (jittered by the caller).
    Retry(Duration),
    Stop,
}

pub(super) async fn run_session(
    shared: Arc<Shared>,
    dealer: Arc<SocketThread>,
    mut control: Inbox,
) {
    let mut retry = FIRST_RETRY;
    // Whether a session was open before and was lost.
    let mut lost_one = false;
    loop {
        let (session, every) = match handshake(&shared, &dealer, &mut control, retry).await {
            Attempt::Open(s, every) => (s, every),
            Attempt::Retry(after) => {
                retry = (retry * 2).min(LAST_RETRY);
                // Waits, but stops at once for a goodbye.
                if let Err(true) = expect(&mut control, jitter(after), |_| None::<()>).await {
                    return;
                }
                continue;
            }
            Attempt::Stop => return,
        };
        retry = FIRST_RETRY;
        if lost_one {
            shared.reopen_events.store(true, Ordering::Relaxed);
        }
        *shared.session.write().expect("session lock") = Some(session.clone());
        *shared.opening.write().expect("session lock") = None;
        // First sealed message: what this minion is.
        let _ = dealer.send(vec![
            session.seal(Channel::Up, &shared.info().encode_to_vec()),
        ]);
        tracing::info!(session = session.id, "session with the master open");
        if shared
            .inbound
            .send(MinionInbound::Connected {
                session: session.id,
            })
            .await
            .is_err()
        {
            return;
        }

        let reason = heartbeat(&shared, &dealer, &session, every, &mut control).await;
        *shared.session.write().expect("session lock") = None;
        let Some(reason) = reason else { return };
        lost_one = true;
        tracing::warn!(%reason, "session with the master ended; reconnecting");
        if shared
            .inbound
            .send(MinionInbound::Disconnected { reason })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Waits for a control message matching `pick`, at most `wait`. Err(true)
/// when the bus is stopping (closed, or a goodbye asked for: there is no
/// session to say it on), Err(false) when the time ran out.
async fn expect<T>(
    control: &mut Inbox,
    wait: Duration,
    mut pick: impl FnMut(Control) -> Option<T>,
) -> Result<T, bool> {
    let got = tokio::time::timeout(wait, async {
        loop {
            match control.recv().await {
                Some(Control::Leave(done)) => {
                    let _ = done.send(());
                    return None;
                }
                Some(c) => {
                    if let Some(t) = pick(c) {
                        return Some(t);
                    }
                }
                None => return None,
            }
        }
    })
    .await;
    match got {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(true), // the bus is shutting down
        Err(_) => Err(false),  // timed out
    }
}

async fn handshake(
    shared: &Shared,
    dealer: &SocketThread,
    control: &mut Inbox,
    retry: Duration,
) -> Attempt {
    let cfg = &shared.cfg;
    let (init, hello) = match Initiator::start(
        cfg.identity.clone(),
        &cfg.minion,
        PeerKind::Minion,
        &cfg.version,
    ) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a handshake");
            return Attempt::Retry(LAST_RETRY);
        }
    };
    let hello = MinionMessage {
        body: Some(minion_message::Body::Hello(hello)),
    };
    let _ = dealer.send(vec![handshake_frame(&hello.encode_to_vec())]);
    let wait = jitter(retry);
    let mine = init.ephemeral().to_vec();
    // Answers to earlier attempts (late, or queued while the master was
    // away) do not echo this attempt's key, and are passed over.
    let challenge = match expect(control, wait, |c| match c {
        Control::Challenge(ch) if ch.hello_ephemeral == mine => Some(Ok(ch)),
        // Before the challenge the master has no key to seal with (a
        // refused name).
        Control::Refused {
            status,
            reason,
            hello,
            ..
        } if hello == mine => Some(Err((status, reason))),
        _ => None,
    })
    .await
    {
        Ok(Ok(ch)) => ch,
        // The master refuses before the Challenge only a name that is not a
        // valid minion id, which this minion can check itself: a refusal
        // for anything else is forged, and costs no more than a dropped
        // hello (not the long REFUSED_RETRY).
        Ok(Err((status, reason))) => match tend_proto::validate_minion_id(&cfg.minion) {
            Err(_) if status == "invalid" => return refused(&status, &reason),
            _ => {
                tracing::warn!(%status, "ignored a clear refusal of a valid name (forged on the path?): {reason}");
                return Attempt::Retry(retry);
            }
        },
        Err(true) => return Attempt::Stop,
        Err(false) => return Attempt::Retry(Duration::ZERO),
    };
    let opened = match init.finish(&challenge) {
        Ok(o) => o,
        Err(e) => {
            return alarm(
                shared,
                format!("handshake with {}: {e}", cfg.command_endpoint),
            )
            .await;
        }
    };
    match cfg.master.check(&opened.master_key) {
        Ok(()) => {}
        Err(e @ PinError::Refused(_)) => {
            return alarm(shared, format!("master at {}: {e}", cfg.command_endpoint)).await;
        }
        // Nothing is wrong with the master: the pin could not be written
        // (a full disk). Nothing was recorded, so try again soon.
        Err(e @ PinError::Io(_)) => {
            tracing::error!("master at {}: {e}", cfg.command_endpoint);
            BusStats::inc(&shared.stats.handshakes_refused);
            return Attempt::Retry(LAST_RETRY);
        }
    }
    let session = Arc::new(opened.session);
    *shared.opening.write().expect("session lock") = Some(session.clone());
    let auth = MinionMessage {
        body: Some(minion_message::Body::Auth(opened.auth)),
    };
    let _ = dealer.send(vec![handshake_frame(&auth.encode_to_vec())]);
    let answer = expect(control, Duration::from_secs(5).max(wait), |c| match c {
        Control::Welcome(hb) => Some(Ok(hb)),
        // After the Auth the master seals its refusal: a clear one is
        // anyone's, and ignored.
        Control::Refused {
            status,
            reason,
            hello,
            sealed: true,
        } if hello == mine => Some(Err((status, reason))),
        _ => None,
    })
    .await;
    // A refusal sealed under this session is the master's own word: the
    // minion drops what it holds on the master's authority (its standing
    // orders).
    if let Ok(Err((status, _))) = &answer {
        let _ = shared
            .inbound
            .send(MinionInbound::Refused {
                status: status.clone(),
            })
            .await;
    }
    let answer = match answer {
        // Pending: the master keeps this would-be session and opens it
        // (a sealed Welcome) when an operator accepts the key, so wait on
        // it rather than only asking again later.
        Ok(Err((status, reason))) if status == "pending" => {
            tracing::warn!(
                "{reason}; waiting to be accepted (asking again in {}s)",
                PENDING_RETRY.as_secs()
            );
            match expect(control, jitter(PENDING_RETRY), |c| match c {
                Control::Welcome(hb) => Some(hb),
                _ => None,
            })
            .await
            {
                Ok(hb) => Ok(Ok(hb)),
                Err(stop) => Err(stop),
            }
        }
        other => other,
    };
    // Cleared by the caller once the session is current, when it opened:
    // a request sealed under it may follow the Welcome at once.
    if !matches!(answer, Ok(Ok(_))) {
        *shared.opening.write().expect("session lock") = None;
    }
    match answer {
        Ok(Ok(heartbeat_ms)) => Attempt::Open(
            session,
            Duration::from_millis(u64::from(heartbeat_ms).max(10)),
        ),
        Ok(Err((status, reason))) => refused(&status, &reason),
        Err(true) => Attempt::Stop,
        Err(false) => Attempt::Retry(Duration::ZERO),
    }
}

fn refused(status: &str, reason: &str) -> Attempt {
    tracing::error!(%status, "the master refused this minion: {reason}");
    Attempt::Retry(REFUSED_RETRY)
}

async fn alarm(shared: &Shared, message: String) -> Attempt {
    tracing::error!("{message}");
    BusStats::inc(&shared.stats.handshakes_refused);
    let _ = shared.inbound.send(MinionInbound::Alarm(message)).await;
    Attempt::Retry(REFUSED_RETRY)
}

/// Keeps a session alive. Returns why it ended, or None when the bus is
/// shutting down.
async fn heartbeat(
    shared: &Shared,
    dealer: &SocketThread,
    session: &Session,
    every: Duration,
    control: &mut Inbox,
) -> Option<String> {
    // Never give up on the master before it had three chances to answer.
    let timeout = shared.cfg.master_timeout.max(every * 3);
    // After a Rehello, how long a sealed word from the master has to come
    // for the session to stand: a few round trips (measured on heartbeats),
    // at least DOUBT_MIN, at most two heartbeats. Checked by its own timer,
    // so a master that really restarted gets its minion back within a
    // heartbeat or so, not only on a later heartbeat tick.
    let grace = (every * 2).max(Duration::from_millis(200));
    let mut beat = tokio::time::interval(every);
    let mut heard = Instant::now();
    // The slowest recent heartbeat round trip (decays by 1/8 per answer).
    let mut rtt = Duration::ZERO;
    // When the heartbeat awaiting an answer was sent.
    let mut beat_sent: Option<Instant> = None;
    // A Rehello (clear, so maybe forged) being checked: since when, until
    // when, and why.
    let mut doubt: Option<(Instant, Instant, String)> = None;
    let send_beat = |beat_sent: &mut Option<Instant>| {
        let msg = MinionMessage {
            body: Some(minion_message::Body::Heartbeat(Heartbeat {
                time_us: now_us(),
            })),
        };
        let _ = dealer.send(vec![session.seal(Channel::Up, &msg.encode_to_vec())]);
        *beat_sent = Some(Instant::now());
    };
    loop {
        let doubt_until = doubt.as_ref().map(|(_, until, _)| *until);
        tokio::select! {
            _ = beat.tick() => {
                if heard.elapsed() > timeout {
                    return Some(format!(
                        "no word from the master for {} ms",
                        timeout.as_millis()
                    ));
                }
                send_beat(&mut beat_sent);
            }
            _ = tokio::time::sleep_until(doubt_until.unwrap_or_else(Instant::now)),
                if doubt_until.is_some() =>
            {
                let reason = doubt.take().map(|(_, _, r)| r).unwrap_or_default();
                return Some(format!("the master asked for a new session: {reason}"));
            }
            c = control.recv() => match c {
                Some(Control::Heard) => {
                    heard = Instant::now();
                    if let Some(sent) = beat_sent.take() {
                        let took = heard.saturating_duration_since(sent);
                        rtt = took.max(rtt - rtt / 8);
                    }
                    // The master answered under the session after the
                    // Rehello: it knows the session, the Rehello was not
                    // its own.
                    if doubt.as_ref().is_some_and(|(since, _, _)| heard > *since) {
                        tracing::warn!("ignored a Rehello the master did not send (forged on the path?)");
                        doubt = None;
                    }
                }
                Some(Control::Rehello { reason, session: s }) if s == session.id => {
                    if doubt.is_none() {
                        let now = Instant::now();
                        let wait = (rtt * 4).max(DOUBT_MIN).min(grace);
                        doubt = Some((now, now + wait, reason));
                        send_beat(&mut beat_sent);
                    }
                }
                Some(Control::Leave(done)) => {
                    say_goodbye(dealer, session, beat_sent.is_some(), control).await;
                    let _ = done.send(());
                    return None;
                }
                // Late answers to an earlier handshake.
                Some(_) => {}
                None => return None,
            }
        }
    }
}

/// Tells the master this minion is stopping, and waits (at most
/// GOODBYE_WAIT) for its answer, so the word is on the wire before the
/// process exits. A heartbeat in flight is answered first.
async fn say_goodbye(
    dealer: &SocketThread,
    session: &Session,
    beat_in_flight: bool,
    control: &mut Inbox,
) {
    let msg = MinionMessage {
        body: Some(minion_message::Body::Goodbye(Goodbye {
            reason: "the minion is stopping".into(),
        })),
    };
    if dealer
        .send(vec![session.seal(Channel::Up, &msg.encode_to_vec())])
        .is_err()
    {
        return;
    }
    let mut answers = if beat_in_flight { 2 } else { 1 };
    let _ = tokio::time::timeout(GOODBYE_WAIT, async {
        while answers > 0 {
            match control.recv().await {
                Some(Control::Heard) => answers -= 1,
                Some(_) => {}
                None => return,
            }
        }
    })
    .await;
    if answers > 0 {
        tracing::debug!(
            "no answer to the goodbye: the master marks this minion down at its presence timeout"
        );
    }
}

/// `d` plus up to half of it again, at random.
pub(crate) fn jitter(d: Duration) -> Duration {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 2];
    let r = match ring::rand::SystemRandom::new().fill(&mut b) {
        Ok(()) => u16::from_le_bytes(b) as u32,
        Err(_) => 0,
    };
    d + d / 2 * r / u32::from(u16::MAX)
}
