//! Measured in this process, no daemons: the cost of sealing, and the
//! reactor's matching and conditions.

use super::prelude::*;

/// The cost of sealing: the same event batches framed and unframed with
/// and without ChaCha20-Poly1305, in this process, side by side.
pub fn seal(events: u64) -> anyhow::Result<Report> {
    use std::sync::Arc;
    use tend_bus::wire::Channel;
    use tend_bus::wire::{Initiator, Responder};
    let master = Responder::new(Arc::new(tend_bus::Identity::ephemeral()?));
    let (init, hello) = Initiator::start(
        Arc::new(tend_bus::Identity::ephemeral()?),
        "bench",
        tend_proto::v1::PeerKind::Minion,
        "bench",
    )?;
    let opened = init.finish(&master.on_hello(&hello, b"measure")?)?;
    let authed = master.on_auth(&opened.auth, b"measure")?;
    let batch = tend_proto::v1::EventBatch {
        events: (0..200)
            .map(|i| tend_proto::v1::Event {
                minion: "bench".into(),
                seq: i + 1,
                tag: "minion/bench/beacon/file/modified".into(),
                time_us: 1_700_000_000_000_000,
                data: br#"{"path":"/etc/motd","kind":"modified","sha256":"e66919eb5161792e2af07ccb8209a55d12ec869dfa6919eb5161792e2af07ccb"}"#.to_vec(),
                cause: 0,
                local_orders: Default::default(),
            })
            .collect(),
        oldest_seq: 1,
    };
    let rounds = (events / 200).max(1);
    let run = |sealed: bool| -> anyhow::Result<f64> {
        let start = Instant::now();
        for _ in 0..rounds {
            let body = batch.encode_to_vec();
            let frame = if sealed {
                opened.session.seal(Channel::Events, &body)
            } else {
                tend_bus::wire::handshake_frame(&body)
            };
            let (h, b) = tend_bus::wire::decode(&frame, 64 << 20)?;
            let plain = if sealed {
                authed.session.open(Channel::Events, &h, b)?
            } else {
                b.to_vec()
            };
            let back = tend_proto::v1::EventBatch::decode(plain.as_slice())?;
            std::hint::black_box(back);
        }
        Ok((rounds * 200) as f64 / start.elapsed().as_secs_f64())
    };
    // Interleaved, three times each, the best of each kept: the machine
    // is shared and noisy.
    let (mut plain, mut sealed) = (0f64, 0f64);
    for _ in 0..3 {
        plain = plain.max(run(false)?);
        sealed = sealed.max(run(true)?);
    }
    let mut r = Report::new(
        "seal",
        "seal: encode + frame + decode of 200-event batches, one core, with and without sealing",
    );
    r.figure("without sealing", plain, "events/s");
    r.figure("with sealing", sealed, "events/s");
    r.figure(
        "cost of sealing",
        (1.0 - sealed / plain) * 100.0,
        "% of throughput",
    );
    Ok(r)
}

/// The reactor alone: events per second through tag matching and CEL
/// conditions with 10, 100 and 1,000 rules, in this process (each event
/// matches one rule in a hundred and evaluates both clauses of its
/// condition; the ingest benchmark's workload).
pub fn rules(events: usize) -> anyhow::Result<Report> {
    crate::workload::check()?;
    let mut r = Report::new(
        "rules",
        format!("rules: {events} events through the reactor, one core"),
    );
    let batch: Vec<tend_proto::v1::Event> = (0..events)
        .map(|i| tend_proto::v1::Event {
            minion: format!("web{}", i % 50),
            seq: i as u64 + 1,
            tag: format!("minion/web{}/event/bench/{}", i % 50, i % 100),
            time_us: 1,
            data: crate::workload::data(i as u64 + 1),
            cause: 0,
            local_orders: Default::default(),
        })
        .collect();
    for n in [10, 100, 1000] {
        let text = crate::workload::rules(n, "fire = \"x\"");
        let rules = std::sync::Arc::new(tend_reactor::Rules::from_texts(&[(
            "bench.toml".into(),
            text,
        )])?);
        let mut reactor = tend_reactor::Reactor::new(rules);
        let now = tokio::time::Instant::now();
        let start = Instant::now();
        let mut fired = 0;
        for e in &batch {
            fired += reactor.on_event(e, now).len();
        }
        let took = start.elapsed();
        if fired != 0 {
            bail!("conditions that are never true fired {fired} times");
        }
        r.figure(
            &format!("{n} rules"),
            events as f64 / took.as_secs_f64(),
            "events/s",
        );
    }
    Ok(r)
}
