//! Micro-benchmarks of the hot paths: protobuf encode/decode of an event,
//! frame seal/open, tag matching against 10, 100 and 1,000 rules, and a
//! store batch insert. `cargo bench -p tend-bench`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use prost::Message;
use tend_bus::Identity;
use tend_bus::wire::Channel;
use tend_bus::wire::{Initiator, Responder};
use tend_proto::v1::{Event, EventBatch, PeerKind};

fn event(seq: u64) -> Event {
    Event {
        minion: "web1".into(),
        seq,
        tag: "minion/web1/beacon/motd/modified".into(),
        time_us: 1_700_000_000_000_000,
        data: br#"{"path":"/etc/motd","kind":"modified","sha256":"e66919eb5161792e2af07ccb8209a55d12ec869dfa69"}"#.to_vec(),
        cause: 0,
        local_orders: Default::default(),
    }
}

fn protobuf(c: &mut Criterion) {
    let e = event(1);
    let bytes = e.encode_to_vec();
    c.bench_function("event encode", |b| b.iter(|| black_box(&e).encode_to_vec()));
    c.bench_function("event decode", |b| {
        b.iter(|| Event::decode(black_box(bytes.as_slice())))
    });
}

fn sealing(c: &mut Criterion) {
    let master = Responder::new(Arc::new(Identity::ephemeral().unwrap()));
    let (init, hello) = Initiator::start(
        Arc::new(Identity::ephemeral().unwrap()),
        "web1",
        PeerKind::Minion,
        "b",
    )
    .unwrap();
    let opened = init
        .finish(&master.on_hello(&hello, b"bench").unwrap())
        .unwrap();
    let authed = master.on_auth(&opened.auth, b"bench").unwrap();
    let batch = EventBatch {
        events: (1..=100).map(event).collect(),
        oldest_seq: 1,
    }
    .encode_to_vec();
    c.bench_function("seal 100-event batch", |b| {
        b.iter(|| opened.session.seal(Channel::Events, black_box(&batch)))
    });
    c.bench_function("seal + open 100-event batch", |b| {
        b.iter(|| {
            let f = opened.session.seal(Channel::Events, &batch);
            let (h, body) = tend_bus::wire::decode(&f, 64 << 20).unwrap();
            authed.session.open(Channel::Events, &h, body).unwrap()
        })
    });
}

fn matching(c: &mut Criterion) {
    for n in [10, 100, 1000] {
        let mut text = String::new();
        for i in 0..n {
            text.push_str(&format!(
                "[[rule]]\nname = \"r{i}\"\non = \"minion/*/beacon/b{i}/*\"\n[[rule.action]]\napply = [\"s\"]\n"
            ));
        }
        let rules = tend_reactor::Rules::from_texts(&[("r.toml".into(), text)]).unwrap();
        let e = Event {
            tag: "minion/web1/beacon/b7/modified".into(),
            ..event(1)
        };
        c.bench_function(&format!("match one event against {n} rules"), |b| {
            b.iter(|| rules.matches(black_box(&e)))
        });
    }
}

fn store(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = tend_store::Store::open(dir.path()).unwrap();
    let mut seq = 0u64;
    c.bench_function("store 1,000-event batch (one durable commit)", |b| {
        b.iter_batched(
            || {
                let events: Vec<Event> = (0..1000)
                    .map(|_| {
                        seq += 1;
                        event(seq)
                    })
                    .collect();
                vec![tend_store::Incoming {
                    minion: "web1".into(),
                    events,
                    ..Default::default()
                }]
            },
            |batch| store.append(batch, vec![]).unwrap(),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, protobuf, sealing, matching, store);
criterion_main!(benches);
