//! What each fuzz target runs: one function per decoder of bytes that come
//! from the network or a file, called both by the libFuzzer targets in
//! `fuzz/` and by the corpus replay in `cargo test` (tests/replay.rs), so a
//! crash the fuzzer found fails the test suite through the very same code.
//!
//! Each function takes arbitrary bytes and must return without panicking,
//! whatever they are: errors are the expected answer to bad input. They
//! call the daemons' own entry points (decode, validate, parse), the
//! master's and minion's configs and the minion's outbox included (from
//! the daemons' library targets).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use prost::Message;
use tend_bus::wire::{self, Kind};
use tend_bus::wire::{Channel, Session};
use tend_bus::wire::{Initiator, Responder};
use tend_bus::{DEFAULT_MAX_MESSAGE, Identity};
use tend_proto::v1::{
    ControlRequest, Event, EventBatch, MasterMessage, MinionMessage, PeerKind, control_request,
    master_message, minion_message, request,
};

use tend_master::config::MasterConfig;
use tend_minion::config::MinionConfig;
use tend_minion::outbox;

/// What a fuzz target runs on one input.
pub type Target = fn(&[u8]);

/// Every target, by the name of its fuzzer and corpus directory
/// (`fuzz/fuzz_targets/<name>.rs`, `fuzz/corpus/<name>/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", frame),
    ("handshake", handshake),
    ("events", events),
    ("control", control),
    ("apply", apply),
    ("rules", rules),
    ("state", state),
    ("master_config", master_config),
    ("minion_config", minion_config),
    ("outbox", outbox),
];

/// The connection (routing id) every fuzzed handshake message comes on.
const ROUTE: &[u8] = b"fuzz";

/// The minion the fuzzed events and hellos claim to come from.
const MINION: &str = "web1";

/// A master and a peer that finished a real handshake: sealed frames are
/// opened under the master's side of it.
struct Pair {
    master: Responder,
    master_session: Session,
    peer_identity: Arc<Identity>,
}

fn pair() -> &'static Pair {
    static PAIR: OnceLock<Pair> = OnceLock::new();
    PAIR.get_or_init(|| {
        let master = Responder::new(Arc::new(Identity::ephemeral().expect("a key")));
        let peer_identity = Arc::new(Identity::ephemeral().expect("a key"));
        let (init, hello) = Initiator::start(peer_identity.clone(), MINION, PeerKind::Minion, "f")
            .expect("a hello");
        let challenge = master.on_hello(&hello, ROUTE).expect("a challenge");
        let opened = init.finish(&challenge).expect("a session");
        let authed = master.on_auth(&opened.auth, ROUTE).expect("an auth");
        Pair {
            master,
            master_session: authed.session,
            peer_identity,
        }
    })
}

/// A frame as the master's ROUTER and SUB threads read it: the header
/// checks, then a clear handshake message or a sealed body opened under a
/// session.
pub fn frame(data: &[u8]) {
    let Ok((header, body)) = wire::decode(data, DEFAULT_MAX_MESSAGE) else {
        return;
    };
    match header.kind {
        Kind::Handshake => {
            let _ = MinionMessage::decode(body);
        }
        Kind::Sealed => {
            let session = &pair().master_session;
            for channel in [Channel::Up, Channel::Events] {
                if let Ok(opened) = session.open(channel, &header, body) {
                    let _ = MinionMessage::decode(opened.as_slice());
                    let _ = EventBatch::decode(opened.as_slice());
                }
            }
        }
    }
}

/// A clear handshake message on either side: the master's handling of a
/// Hello (the id check, then the signed Challenge) or an Auth, and the
/// minion's of a Challenge, a Refused or a Rehello.
pub fn handshake(data: &[u8]) {
    let pair = pair();
    if let Ok(msg) = MinionMessage::decode(data) {
        match msg.body {
            Some(minion_message::Body::Hello(hello))
                if tend_proto::validate_minion_id(&hello.minion).is_ok() =>
            {
                let _ = pair.master.on_hello(&hello, ROUTE);
            }
            Some(minion_message::Body::Auth(auth)) => {
                let _ = pair.master.on_auth(&auth, ROUTE);
            }
            _ => {}
        }
    }
    if let Ok(msg) = MasterMessage::decode(data)
        && let Some(master_message::Body::Challenge(challenge)) = msg.body
    {
        let Ok((init, _)) =
            Initiator::start(pair.peer_identity.clone(), MINION, PeerKind::Minion, "f")
        else {
            return;
        };
        // The minion answers only a challenge to its own hello; the fuzzer
        // cannot guess a fresh ephemeral key, so it is filled in.
        let challenge = tend_proto::v1::Challenge {
            hello_ephemeral: init.ephemeral().to_vec(),
            ..challenge
        };
        if let Ok(opened) = init.finish(&challenge) {
            let _ = tend_bus::MasterPin::Fingerprint(String::new()).check(&opened.master_key);
        }
    }
}

/// The rules events are matched against in [`events`]: every kind of
/// condition over the event's data, so the fuzzed JSON reaches CEL.
fn event_rules() -> &'static tend_reactor::Rules {
    static RULES: OnceLock<tend_reactor::Rules> = OnceLock::new();
    RULES.get_or_init(|| {
        let text = r#"
            [[rule]]
            name = "by-data"
            on = "minion/*/beacon/**"
            when = 'event.data.kind == "deleted" || event.data.size > 10 || "x" in event.data.list'
            group_by = ["minion", "tag", "data.path"]
            [[rule.action]]
            apply = ["motd"]

            [[rule]]
            name = "any"
            on = "**"
            caused = true
            [[rule.action]]
            fire = "seen"
        "#;
        tend_reactor::Rules::from_texts(&[("fuzz.toml".into(), text.into())])
            .expect("the fuzz rules compile")
    })
}

/// An event batch as the master takes it from a minion's session: the
/// batch decoded, each event validated, and the valid ones matched against
/// rules (conditions see the event's data).
pub fn events(data: &[u8]) {
    let Ok(batch) = EventBatch::decode(data) else {
        return;
    };
    let rules = event_rules();
    for event in batch.events {
        if tend_bus::check_event(MINION, &event, DEFAULT_MAX_MESSAGE).is_err() {
            continue;
        }
        for m in rules.matches(&event) {
            let _ = tend_reactor::group_key(rules.get(m.rule), &event);
        }
        let _ = tend_reactor::Reactor::explain(rules, &event);
    }
}

/// A control request as the master (and a minion's local socket) decodes
/// it, with the pure part of handling each field: targets parsed and
/// matched, tag globs compiled, state names checked, sent events validated.
pub fn control(data: &[u8]) {
    let Ok(req) = ControlRequest::decode(data) else {
        return;
    };
    let Some(body) = req.body else { return };
    let facts: HashMap<String, String> = [("os".to_string(), "debian".to_string())].into();
    // Labels the master assigned to the key (targeted as `key.<label>`).
    let labels: HashMap<String, String> = [("role".to_string(), "web".to_string())].into();
    let target = |text: &str| {
        let Ok(t) = tend_state::Target::parse(text) else {
            return;
        };
        let _ = t.matches(MINION, &facts, &labels);
        for id in t.exact_ids().unwrap_or_default() {
            let _ = tend_proto::validate_minion_id(&id);
        }
    };
    // The master's `event_filter` (a binary's private function) compiles
    // the tag glob so.
    let tag_glob = |tag: &str| {
        let _ = globset::GlobBuilder::new(tag)
            .literal_separator(false)
            .build()
            .map(|g| {
                g.compile_matcher()
                    .is_match("minion/web1/beacon/motd/modified")
            });
    };
    match body {
        control_request::Body::ListEvents(q) => tag_glob(&q.tag),
        control_request::Body::FollowEvents(q) => tag_glob(&q.tag),
        control_request::Body::Apply(cmd) => {
            target(&cmd.target);
            // State names are checked before anything is read: the tree's
            // root does not exist.
            let _ = tend_state::StateTree::new(no_such_dir()).load_set(&cmd.states);
        }
        control_request::Body::Ping(p) => target(&p.target),
        control_request::Body::Run(cmd) => target(&cmd.target),
        control_request::Body::SendEvents(send) => {
            for data in &send.data {
                let _ = serde_json::from_slice::<serde_json::Value>(data);
            }
            let tag = format!("minion/{MINION}/event/{}", send.tag.trim_matches('/'));
            let _ = tend_proto::validate_tag(&tag, Some(MINION));
        }
        _ => {}
    }
}

/// What a minion decodes from the master: a request, and for an apply the
/// states it carries (JSON) put in requisite order. Nothing is applied.
pub fn apply(data: &[u8]) {
    let Ok(msg) = MasterMessage::decode(data) else {
        return;
    };
    let Some(master_message::Body::Request(req)) = msg.body else {
        return;
    };
    match req.body {
        Some(request::Body::Apply(apply)) => {
            if let Ok(states) = serde_json::from_slice::<Vec<tend_state::State>>(&apply.states_json)
            {
                let _ = tend_state::order(&states);
                for s in &states {
                    let _ = (s.spec.kind(), s.spec.name(), s.spec.path());
                }
            }
        }
        Some(request::Body::Run(run)) => {
            let _ = run.argv.split_first();
        }
        _ => {}
    }
}

/// A reactor rule file, as the master loads it from `reactor.d/`; the
/// rules it gives are matched against an event.
pub fn rules(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rules) = tend_reactor::Rules::from_texts(&[("fuzz.toml".into(), text.into())]) else {
        return;
    };
    let event = Event {
        minion: MINION.into(),
        seq: 1,
        tag: "minion/web1/beacon/motd/modified".into(),
        time_us: 1,
        data: br#"{"path":"/etc/motd","kind":"modified","size":12}"#.to_vec(),
        cause: 0,
        local_orders: Default::default(),
    };
    for m in rules.matches(&event) {
        let _ = tend_reactor::group_key(rules.get(m.rule), &event);
    }
}

/// A state file of the master's state tree, and the same text as its top
/// file.
pub fn state(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(states) = tend_state::parse_state_file("fuzz.toml", "fuzz", text) {
        let _ = tend_state::order(&states);
    }
    let dir = scratch_file("top.toml", data);
    let facts: HashMap<String, String> = [("os".to_string(), "debian".to_string())].into();
    // Labels the master assigned to the key (targeted as `key.<label>`).
    let labels: HashMap<String, String> = [("role".to_string(), "web".to_string())].into();
    if let Ok(top) = tend_state::StateTree::new(dir.parent().unwrap_or(Path::new("/"))).top() {
        let _ = top.states_for(MINION, &facts, &labels);
    }
}

/// master.toml, read and checked as `tend-master` does.
pub fn master_config(data: &[u8]) {
    let path = scratch_file("master.toml", data);
    if let Ok(cfg) = MasterConfig::load(&path) {
        let _ = cfg.retention_period();
        let _ = cfg.control_endpoint();
    }
}

/// minion.toml, read and checked as `tend-minion` does, beacons included
/// (built, not started).
pub fn minion_config(data: &[u8]) {
    let path = scratch_file("minion.toml", data);
    if let Ok(mut cfg) = MinionConfig::load(&path) {
        let _ = cfg.minion_id();
        let _ = (cfg.event_endpoint(), cfg.command_endpoint());
        let _ = tend_beacons::build_all("minion.toml", std::mem::take(&mut cfg.beacon));
    }
}

/// A segment of the minion's outbox as a previous run (perhaps killed
/// mid-write) left it: recovered on open, then read back.
pub fn outbox(data: &[u8]) {
    let dir = scratch_dir().join("outbox");
    let _ = std::fs::remove_dir_all(&dir);
    if std::fs::create_dir_all(&dir).is_err()
        || std::fs::write(dir.join("seg-1.log"), data).is_err()
    {
        return;
    }
    if let Ok(mut ob) = outbox::Outbox::open(&dir, outbox::MIN_BYTES, false) {
        let _ = ob.read(0, 10_000, DEFAULT_MAX_MESSAGE);
    }
}

/// A directory of this thread's own (targets run on several threads in
/// the replay test), removed when the thread ends.
fn scratch_dir() -> PathBuf {
    thread_local! {
        static DIR: tempfile::TempDir = tempfile::tempdir().expect("a scratch directory");
    }
    DIR.with(|d| d.path().to_path_buf())
}

/// Writes `data` to `name` in this thread's scratch directory.
fn scratch_file(name: &str, data: &[u8]) -> PathBuf {
    let path = scratch_dir().join(name);
    std::fs::write(&path, data).expect("the scratch file is writable");
    path
}

fn no_such_dir() -> PathBuf {
    scratch_dir().join("no-such-state-tree")
}
