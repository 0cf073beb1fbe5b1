//! Writes the seed inputs of every fuzz corpus (`fuzz/corpus/<target>/
//! seed-*`): real, valid inputs (frames and messages encoded by the bus
//! itself, the example configs, rules and states in configs/), from which
//! the fuzzers mutate. Run from the repository root:
//! `cargo run -p tend-fuzz-targets --example seeds`.

use std::path::Path;
use std::sync::Arc;

use prost::Message;
use tend_bus::Identity;
use tend_bus::wire::Channel;
use tend_bus::wire::handshake_frame;
use tend_bus::wire::{Initiator, Responder};
use tend_proto::v1::*;

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = Path::new("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(format!("seed-{name}")), data).expect("seed written");
}

fn copy(target: &str, name: &str, file: &str) {
    let text = std::fs::read(file).unwrap_or_else(|e| panic!("{file}: {e}"));
    write(target, name, &text);
}

fn event(seq: u64, tag: &str, data: &str) -> Event {
    Event {
        minion: "web1".into(),
        seq,
        tag: tag.into(),
        time_us: 1_700_000_000_000_000,
        data: data.as_bytes().to_vec(),
        cause: 0,
        local_orders: Default::default(),
    }
}

fn minion_msg(body: minion_message::Body) -> Vec<u8> {
    MinionMessage { body: Some(body) }.encode_to_vec()
}

fn master_msg(body: master_message::Body) -> Vec<u8> {
    MasterMessage { body: Some(body) }.encode_to_vec()
}

fn control(body: control_request::Body) -> Vec<u8> {
    ControlRequest {
        id: 7,
        body: Some(body),
    }
    .encode_to_vec()
}

fn request(body: request::Body) -> Vec<u8> {
    master_msg(master_message::Body::Request(Request {
        id: 3,
        deadline_us: 0,
        body: Some(body),
    }))
}

const STATES_JSON: &str = r#"[
 {"id":"motd","sls":"motd","spec":{"type":"file.managed","path":"/etc/motd","contents":"hello\n","mode":"0644"}},
 {"id":"dir","sls":"web","spec":{"type":"file.directory","path":"/srv/www","mode":"0755"}},
 {"id":"gone","sls":"web","spec":{"type":"file.absent","path":"/tmp/old"},"requisites":{"require":["dir"]}},
 {"id":"nginx","sls":"web","spec":{"type":"service.running","name":"nginx"},"requisites":{"watch":["motd"]}}
]"#;

const RULES: &[(&str, &str)] = &[
    (
        "policies",
        r#"
[[rule]]
name = "disk-full"
on = ["minion/*/beacon/disk/*", "minion/*/beacon/df/**"]
when = 'event.data.used_pct > 90.0 && event.data.mount == "/"'
group_by = ["minion", "data.mount"]
count = 3
window = "5m"
once_within = "1h"
max_rate = "3/1m"

[[rule.action]]
run = ["logger", "disk full on {{ event.minion }}"]
target = "web* and os:debian"
timeout = "30s"

[[rule.action]]
fire = "tend/alert/disk"
data = { minion = "{{ event.minion }}", level = "high" }
"#,
    ),
    (
        "for-debounce",
        r#"
[[rule]]
name = "cpu-hot"
on = "minion/*/beacon/cpu/*"
when = "event.data.state == 'above'"
for = "2m"
caused = true

[[rule.action]]
webhook = "http://127.0.0.1:9/hook"
retries = 2
timeout = "5s"

[[rule]]
name = "settle"
on = "minion/*/event/deploy/**"
debounce = "10s"
group_by = ["tag"]

[[rule.action]]
apply = ["motd", "web.nginx"]
test = true
"#,
    ),
];

const STATES: &[(&str, &str)] = &[
    (
        "all-types",
        r#"
[nginx-conf]
type = "file.managed"
path = "/etc/nginx/nginx.conf"
source = "files/nginx.conf"
template = true
mode = "0644"
user = "root"
group = "root"
makedirs = true
backup = true

[www]
type = "file.directory"
path = "/srv/www"
mode = "0755"
clean = true

[old]
type = "file.absent"
path = "/tmp/old"
onfail = "www"

[link]
type = "file.symlink"
path = "/srv/current"
target = "/srv/www"
force = true

[line]
type = "file.line"
path = "/etc/hosts"
line = "127.0.0.1 web1"

[reload]
type = "cmd.run"
command = ["nginx", "-s", "reload"]
unless = "test -f /run/nope"
creates = "/run/reloaded"
cwd = "/"
env = { LANG = "C" }
timeout = 30
onchanges = ["nginx-conf"]

[hosts]
type = "file.line"
path = "/etc/hosts"
match = "^127\\.0\\.0\\.1"
line = "127.0.0.1 localhost web1"
ensure = "replace"

[nginx]
type = "service.running"
name = "nginx"
enable = true
watch = ["nginx-conf", "link"]

[pkg]
type = "pkg.installed"
name = "nginx"
require = ["www"]
"#,
    ),
    (
        "top",
        r#"
[[target]]
match = "web* and os:debian"
states = ["motd", "web.nginx"]

[[target]]
match = "(db1 or db2) and not label.role:test"
states = ["motd"]
"#,
    ),
];

const MINION_CONFIGS: &[(&str, &str)] = &[(
    "beacons",
    r#"
id = "web1"
master = "10.0.0.1"
master_fingerprint = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
metrics_listen = "127.0.0.1:9101"

[labels]
role = "web"

[[beacon]]
name = "etc"
type = "file"
paths = ["/etc"]
recursive = true
include = ["*.conf"]
exclude = ["*.swp"]
coalesce_ms = 50
rate_limit = "100/1s"

[[beacon]]
name = "cpu"
type = "cpu"
above = 90
below = 80
for = "30s"
interval = "5s"

[[beacon]]
name = "load"
type = "load"
1m = [0.0, 8.0]
onchange_only = false

[[beacon]]
name = "disk"
type = "disk"
enabled = false
"#,
)];

fn main() {
    // A real handshake, so every frame and message below is what the bus
    // itself sends.
    let master = Responder::new(Arc::new(Identity::ephemeral().unwrap()));
    let peer = Arc::new(Identity::ephemeral().unwrap());
    let (init, hello) = Initiator::start(peer, "web1", PeerKind::Minion, "0.1.0").unwrap();
    let challenge = master.on_hello(&hello, b"seed").unwrap();
    let opened = init.finish(&challenge).unwrap();
    let hello_msg = minion_msg(minion_message::Body::Hello(hello.clone()));
    let auth_msg = minion_msg(minion_message::Body::Auth(opened.auth.clone()));
    let challenge_msg = master_msg(master_message::Body::Challenge(challenge.clone()));

    let batch = EventBatch {
        events: vec![
            event(
                1,
                "minion/web1/beacon/motd/modified",
                r#"{"path":"/etc/motd","kind":"modified","size":12}"#,
            ),
            event(
                2,
                "minion/web1/beacon/disk/full",
                r#"{"mount":"/","used_pct":93.5,"list":["x"]}"#,
            ),
            event(3, "minion/web1/event/deploy/done", ""),
            event(4, "minion/web2/beacon/spoof", r#"{"kind":"deleted"}"#),
        ],
        oldest_seq: 1,
    }
    .encode_to_vec();

    // frame
    write("frame", "hello", &handshake_frame(&hello_msg));
    write("frame", "auth", &handshake_frame(&auth_msg));
    let heartbeat = minion_msg(minion_message::Body::Heartbeat(Heartbeat { time_us: 1 }));
    write(
        "frame",
        "sealed-heartbeat",
        &opened.session.seal(Channel::Up, &heartbeat),
    );
    write(
        "frame",
        "sealed-events",
        &opened.session.seal(Channel::Events, &batch),
    );

    // handshake
    write("handshake", "hello", &hello_msg);
    write("handshake", "auth", &auth_msg);
    write("handshake", "challenge", &challenge_msg);
    write(
        "handshake",
        "refused",
        &master_msg(master_message::Body::Refused(Refused {
            status: "pending".into(),
            reason: "an operator must accept it".into(),
            hello_ephemeral: hello.ephemeral_key.clone(),
        })),
    );
    write(
        "handshake",
        "rehello",
        &master_msg(master_message::Body::Rehello(Rehello {
            reason: "unknown session".into(),
            session: 9,
        })),
    );

    // events
    write("events", "batch", &batch);

    // control
    use control_request::Body as C;
    let requests: Vec<(&str, Vec<u8>)> = vec![
        (
            "list-events",
            control(C::ListEvents(ListEvents {
                minion: "web1".into(),
                tag: "minion/*/beacon/{motd,disk}/**".into(),
                since_us: 5,
                limit: 10,
                ..Default::default()
            })),
        ),
        (
            "follow",
            control(C::FollowEvents(FollowEvents {
                tag: "minion/web[0-9]/**".into(),
                ..Default::default()
            })),
        ),
        (
            "apply",
            control(C::Apply(ApplyCommand {
                target: "web* and os:debian".into(),
                states: vec!["motd".into(), "web.nginx".into()],
                test: true,
                timeout_ms: 1000,
            })),
        ),
        (
            "ping",
            control(C::Ping(PingMinions {
                target: "web1,web2".into(),
                timeout_ms: 100,
            })),
        ),
        (
            "run",
            control(C::Run(RunCommand {
                target: "(web1 or db*) and not label.role:test".into(),
                argv: vec!["uptime".into()],
                timeout_ms: 100,
            })),
        ),
        (
            "send-events",
            control(C::SendEvents(SendEvents {
                tag: "deploy/done".into(),
                data: vec![br#"{"version":"1.2"}"#.to_vec(), b"{}".to_vec()],
            })),
        ),
        (
            "change-keys",
            control(C::ChangeKeys(ChangeKeys {
                action: "accept".into(),
                kind: "minion".into(),
                pattern: "web*".into(),
                ..Default::default()
            })),
        ),
    ];
    for (name, bytes) in requests {
        write("control", name, &bytes);
    }

    // apply
    write(
        "apply",
        "apply",
        &request(request::Body::Apply(ApplyRequest {
            job: 1,
            test: true,
            states_json: STATES_JSON.as_bytes().to_vec(),
        })),
    );
    write(
        "apply",
        "run",
        &request(request::Body::Run(RunRequest {
            job: 2,
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            timeout_ms: 100,
        })),
    );
    write("apply", "ping", &request(request::Body::Ping(Ping {})));

    // rules, state, configs
    copy(
        "rules",
        "restore-motd",
        "configs/reactor.d/restore-motd.toml",
    );
    for (name, text) in RULES {
        write("rules", name, text.as_bytes());
    }
    copy("state", "motd", "configs/states/motd.toml");
    for (name, text) in STATES {
        write("state", name, text.as_bytes());
    }
    copy("master_config", "example", "configs/master.toml");
    write(
        "master_config",
        "all-keys",
        br#"
event_endpoint = "tcp://127.0.0.1:4510"
command_endpoint = "ipc:///run/tend/cmd.sock"
control_endpoint = "ipc:///run/tend/control.sock"
auto_accept = false
accept_fingerprints = ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]
retention = "12h"
max_events = 1000
metrics_listen = "127.0.0.1:9100"
[log]
level = "info,tend_bus=debug"
format = "json"
"#,
    );
    copy("minion_config", "example", "configs/minion.toml");
    for (name, text) in MINION_CONFIGS {
        write("minion_config", name, text.as_bytes());
    }

    // outbox: a segment as the minion writes it ([len][crc32][Event]),
    // then the same with a torn last record.
    let mut segment = Vec::new();
    for e in EventBatch::decode(batch.as_slice()).unwrap().events {
        let payload = e.encode_to_vec();
        segment.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        segment.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        segment.extend_from_slice(&payload);
    }
    write("outbox", "segment", &segment);
    write("outbox", "torn", &segment[..segment.len() - 5]);
}
