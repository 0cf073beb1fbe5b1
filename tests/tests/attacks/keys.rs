//! Key acceptance and identity: a name never changes key silently, a glob
//! never touches denied or accepted keys, a pre-seeded fingerprint is one
//! identity, and secrets are never targeted by what a minion says of itself.

use super::*;

use tend_e2e::run_daemon;

fn fp(identity: &Identity) -> String {
    identity.fingerprint()
}

fn key() -> Arc<Identity> {
    Arc::new(Identity::ephemeral().unwrap())
}

/// `tend keys list --json`: (name, kind, state, fingerprint) of every key.
fn keys(master: &Master) -> Vec<(String, String, String, String)> {
    let listed = master.tend_json(&["keys", "list"]);
    listed[0]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let s = |f: &str| k[f].as_str().unwrap_or("").to_string();
            (s("name"), s("kind"), s("state"), s("fingerprint"))
        })
        .collect()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn status(endpoint: &str, identity: &Arc<Identity>, name: &str, kind: PeerKind) -> String {
    match handshake(endpoint, identity.clone(), name, kind) {
        Ok(_) => "welcome".into(),
        Err(status) => status,
    }
}

/// Runs `tend ARGS` on a terminal (util-linux `script`), typing `input`.
fn on_a_terminal(master: &Master, args: &str, input: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} --master {} {args}",
            tend_e2e::bin("tend").display(),
            master.control
        ))
        .arg("/dev/null")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("util-linux `script` runs tend on a terminal");
    // Typed ahead: the terminal holds it until tend reads its answer.
    // Stdin stays open until tend is done, so `script` does not end the
    // session early.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    text(&out)
}

#[test]
fn finding_2_a_second_key_never_replaces_a_pending_one() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "auto_accept = false");
    master.start();
    let ep = master.command_endpoint.clone();
    let real = key();
    let attacker = key();

    assert_eq!(status(&ep, &real, "web2", PeerKind::Minion), "pending");
    // The attacker spins hellos as web2 with its own key.
    for _ in 0..3 {
        assert_ne!(status(&ep, &attacker, "web2", PeerKind::Minion), "welcome");
    }
    let listed = keys(&master);
    let web2: Vec<_> = listed.iter().filter(|k| k.0 == "web2").collect();
    assert!(
        web2.iter().any(|k| k.2 == "pending" && k.3 == fp(&real)),
        "the first key stays pending: {listed:?}"
    );
    assert!(
        web2.iter()
            .any(|k| k.2 != "pending" && k.3 == fp(&attacker)),
        "the second key is kept apart, shown with its fingerprint: {listed:?}"
    );

    // Accepting the name without a fingerprint is refused, saying which.
    let out = master.tend(&["keys", "accept", "web2"]);
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains(&fp(&real))
            && said.contains(&fp(&attacker))
            && said.contains("--fingerprint"),
        "{said}"
    );
    assert_ne!(status(&ep, &real, "web2", PeerKind::Minion), "welcome");

    // By fingerprint: the one the operator picked, and only it.
    let out = master.tend(&["keys", "accept", "web2", "--fingerprint", &fp(&real)]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(status(&ep, &real, "web2", PeerKind::Minion), "welcome");
    assert_eq!(status(&ep, &attacker, "web2", PeerKind::Minion), "denied");
    assert!(
        keys(&master)
            .iter()
            .any(|k| k.0 == "web2" && k.2 == "accepted" && k.3 == fp(&real))
    );
}

#[test]
fn finding_3_a_glob_accepts_pending_keys_only_and_asks_first() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "auto_accept = false");
    master.start();
    let ep = master.command_endpoint.clone();
    let web1 = key();
    let impostor = key();
    let web3 = key();
    let db1 = key();

    assert_eq!(status(&ep, &web1, "web1", PeerKind::Minion), "pending");
    assert!(master.tend(&["keys", "accept", "web1"]).status.success());
    assert_eq!(status(&ep, &web1, "web1", PeerKind::Minion), "welcome");
    assert_eq!(status(&ep, &impostor, "web1", PeerKind::Minion), "denied");
    assert_eq!(status(&ep, &web3, "web3", PeerKind::Minion), "pending");
    assert_eq!(status(&ep, &db1, "db1", PeerKind::Minion), "pending");
    assert!(master.tend(&["keys", "reject", "db1"]).status.success());

    // No terminal to ask on and no --yes: nothing changes, and the
    // operator is told what the glob would accept.
    let out = master.tend(&["keys", "accept", "web*"]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("--yes") && said.contains(&fp(&web3)),
        "{said}"
    );
    assert_eq!(status(&ep, &web1, "web1", PeerKind::Minion), "welcome");
    assert_eq!(status(&ep, &web3, "web3", PeerKind::Minion), "pending");

    // With --yes: the pending web3 only, never the denied key for web1.
    let out = master.tend(&["keys", "accept", "web*", "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("web3") && !text(&out).contains("web1"),
        "{}",
        text(&out)
    );
    assert_eq!(status(&ep, &web1, "web1", PeerKind::Minion), "welcome");
    assert_eq!(status(&ep, &impostor, "web1", PeerKind::Minion), "denied");
    assert_eq!(status(&ep, &web3, "web3", PeerKind::Minion), "welcome");

    // On a terminal the operator is shown the keys and asked.
    let web4 = key();
    assert_eq!(status(&ep, &web4, "web4", PeerKind::Minion), "pending");
    let said = on_a_terminal(&master, "keys accept 'web*'", "n\n");
    assert!(
        said.contains(&fp(&web4)) && said.contains("[y/N]"),
        "{said}"
    );
    assert_eq!(status(&ep, &web4, "web4", PeerKind::Minion), "pending");
    let said = on_a_terminal(&master, "keys accept 'web*'", "y\n");
    assert!(said.contains("accepted: web4"), "{said}");
    assert_eq!(status(&ep, &web4, "web4", PeerKind::Minion), "welcome");

    // A glob never accepts a rejected key either.
    let out = master.tend(&["keys", "accept", "db*", "--yes"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(status(&ep, &db1, "db1", PeerKind::Minion), "rejected");

    // A denied key is accepted only by name and fingerprint.
    let out = master.tend(&["keys", "accept", "web1"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(status(&ep, &web1, "web1", PeerKind::Minion), "welcome");
    let out = master.tend(&["keys", "accept", "web1", "--fingerprint", &fp(&impostor)]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(status(&ep, &impostor, "web1", PeerKind::Minion), "welcome");
    assert_ne!(status(&ep, &web1, "web1", PeerKind::Minion), "welcome");
}

#[test]
fn finding_4_a_preseeded_fingerprint_is_one_identity_of_one_kind() {
    let tmp = tempfile::tempdir().unwrap();
    let mallory = key();

    // The old form, a bare list of fingerprints, said nothing of kind or
    // name: refused, naming the fingerprint and the form to use.
    let old = Master::new(
        &tmp.path().join("old"),
        &format!("accept_fingerprints = [{:?}]", fp(&mallory)),
    );
    let (code, said) = run_daemon("tend-master", &old.config(), &["--check-config"]);
    assert_ne!(code, 0, "{said}");
    assert!(
        said.contains(&fp(&mallory)) && said.contains("[[accept_fingerprints]]"),
        "{said}"
    );

    let mut master = Master::new(
        &tmp.path().join("master"),
        &format!(
            "auto_accept = false\n[[accept_fingerprints]]\nfingerprint = {:?}\nkind = \"minion\"\nname = \"web-*\"\n",
            fp(&mallory)
        ),
    );
    master.start();
    let ep = master.command_endpoint.clone();
    // Not an operator, not a minion outside its glob.
    assert_ne!(status(&ep, &mallory, "root", PeerKind::Operator), "welcome");
    assert_ne!(status(&ep, &mallory, "db2", PeerKind::Minion), "welcome");
    // One name in its glob, once.
    assert_eq!(status(&ep, &mallory, "web-1", PeerKind::Minion), "welcome");
    assert_ne!(
        status(&ep, &mallory, "web-future-1", PeerKind::Minion),
        "welcome"
    );
    assert_eq!(status(&ep, &mallory, "web-1", PeerKind::Minion), "welcome");
    // An operator cannot make the same key an operator either.
    let out = master.tend(&["keys", "accept", "--operator", "root"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert_ne!(status(&ep, &mallory, "root", PeerKind::Operator), "welcome");
    let out = master.tend(&["keys", "accept", "db2"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert_ne!(status(&ep, &mallory, "db2", PeerKind::Minion), "welcome");
    assert!(
        keys(&master)
            .iter()
            .filter(|k| k.3 == fp(&mallory) && k.2 == "accepted")
            .count()
            == 1
    );
}

#[test]
fn finding_12_secrets_are_not_targeted_by_what_a_minion_says() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("db-password");
    let mut master = Master::new(&tmp.path().join("master"), "");
    master.state_file(
        "dbsecret.toml",
        &format!(
            "[db-password]\ntype = \"file.managed\"\npath = {:?}\ntemplate = true\n\
             contents = \"hunter2 for {{{{ minion }}}}\"\nmode = \"0600\"\n",
            secret.display()
        ),
    );
    // Targeted by a fact the minion reports: --check-config warns, and
    // says what to target by instead.
    master.state_file(
        "top.toml",
        "[[target]]\nmatch = \"label.role:db\"\nstates = [\"dbsecret\"]\n",
    );
    let (code, said) = run_daemon("tend-master", &master.config(), &["--check-config"]);
    assert_eq!(code, 0, "a warning, not an error: {said}");
    assert!(
        said.contains("warning")
            && said.contains("dbsecret")
            && said.contains("label.role:db")
            && said.contains("key.role:db"),
        "{said}"
    );

    // By a label the master assigns: no warning, and a lying minion gets
    // nothing.
    master.state_file(
        "top.toml",
        "[[target]]\nmatch = \"key.role:db\"\nstates = [\"dbsecret\"]\n",
    );
    let (code, said) = run_daemon("tend-master", &master.config(), &["--check-config"]);
    assert_eq!(code, 0, "{said}");
    assert!(!said.contains("warning"), "{said}");
    master.start();
    let mut liar = Minion::new(
        &tmp.path().join("liar"),
        "mallory",
        &master,
        "labels = { role = \"db\" }",
    );
    liar.start();
    let mut db = Minion::new(&tmp.path().join("db"), "db1", &master, "");
    db.start();
    master.wait_connected("mallory");
    master.wait_connected("db1");
    let out = master.tend(&["keys", "label", "db1", "role=db"]);
    assert!(out.status.success(), "{}", text(&out));
    let job = &master.tend_json(&["apply", "key.role:db"])[0];
    let minions: Vec<&str> = job["minions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["minion"].as_str().unwrap())
        .collect();
    assert_eq!(minions, ["db1"], "{job}");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "hunter2 for db1");
    // The whole fleet's top-file apply: the liar gets no states.
    let out = master.tend(&["apply", "*"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap(),
        "hunter2 for db1",
        "a minion's word got it a secret"
    );
    // The label is the master's: listed with the key.
    let listed = master.tend_json(&["keys", "list"]);
    assert!(
        listed[0]["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["name"] == "db1" && k["labels"]["role"] == "db"),
        "{listed:?}"
    );
}

#[test]
fn finding_13_a_key_named_like_a_temp_file_is_listed_and_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "auto_accept = false");
    master.start();
    let ep = master.command_endpoint.clone();
    let a = key();
    let b = key();
    assert_eq!(status(&ep, &a, "web1.tmp", PeerKind::Minion), "pending");
    assert_eq!(status(&ep, &b, "web1", PeerKind::Minion), "pending");
    let listed = keys(&master);
    assert!(
        listed
            .iter()
            .any(|k| k.0 == "web1.tmp" && k.2 == "pending" && k.3 == fp(&a)),
        "{listed:?}"
    );
    assert!(
        listed
            .iter()
            .any(|k| k.0 == "web1" && k.2 == "pending" && k.3 == fp(&b)),
        "{listed:?}"
    );
    // Nothing else is left in the key store: no temp files.
    let pending = master.dir.join("data/keys/minions/pending");
    let mut files: Vec<String> = std::fs::read_dir(&pending)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["web1", "web1.tmp"]);
}

/// Review (review2): the attacker claimed a brand-new name first, the real
/// key was denied, and the operator accepted the attacker's key by
/// mistake; the attacker holds a session. Accepting the real key by its
/// fingerprint ends the attacker's live session at once (a sealed
/// heartbeat gets no sealed answer) and the real key gets its Welcome.
#[test]
fn review_accepting_the_real_key_ends_the_impostors_live_session() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "auto_accept = false");
    master.start();
    let ep = master.command_endpoint.clone();
    let (real, attacker) = (key(), key());
    assert_eq!(status(&ep, &attacker, "web8", PeerKind::Minion), "pending");
    assert_eq!(status(&ep, &real, "web8", PeerKind::Minion), "denied");
    let listed = keys(&master);
    assert!(
        listed
            .iter()
            .any(|k| k.0 == "web8" && k.2 == "denied" && k.3 == fp(&real)),
        "{listed:?}"
    );
    let out = master.tend(&["keys", "accept", "web8", "--fingerprint", &fp(&attacker)]);
    assert!(out.status.success(), "{}", text(&out));
    let imp =
        handshake(&ep, attacker.clone(), "web8", PeerKind::Minion).expect("the impostor is in");
    let beat = || {
        imp.seal(minion_message::Body::Heartbeat(tend_proto::v1::Heartbeat {
            time_us: 1,
        }))
    };
    let answered = |p: &Peer| -> bool {
        let Ok(bytes) = p.socket.recv_bytes(0) else {
            return false;
        };
        let Ok((h, b)) = wire::decode(&bytes, 1 << 20) else {
            return false;
        };
        h.kind == wire::Kind::Sealed
            && p.session
                .as_ref()
                .unwrap()
                .open(Channel::Down, &h, b)
                .is_ok()
    };
    imp.socket.send(beat(), 0).unwrap();
    assert!(answered(&imp), "the impostor's session works before");
    let out = master.tend(&["keys", "accept", "web8", "--fingerprint", &fp(&real)]);
    assert!(out.status.success(), "{}", text(&out));
    imp.socket.send(beat(), 0).unwrap();
    assert!(
        !answered(&imp),
        "the impostor's session outlived the accept of the real key"
    );
    assert_eq!(status(&ep, &attacker, "web8", PeerKind::Minion), "denied");
    assert_eq!(status(&ep, &real, "web8", PeerKind::Minion), "welcome");
}

/// Review 4, finding 3, through the real master and `tend`: an attacker
/// claimed web9 first and filled its denied list before the real minion
/// came up. The real key is listed after its hello (the list keeps the
/// keys heard from last); pushed out again by more of the attacker's
/// keys, the list says how many it dropped, and accepting the real key's
/// fingerprint (which the machine itself prints) pre-approves it though
/// no key held has it: the real key's next hello gets its Welcome, and the
/// attacker's key that came first is denied.
#[test]
fn review4_a_real_key_after_a_prefilled_denied_list_gets_in_by_its_fingerprint() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "auto_accept = false");
    master.start();
    let ep = master.command_endpoint.clone();
    let (real, first) = (key(), key());
    assert_eq!(status(&ep, &first, "web9", PeerKind::Minion), "pending");
    for _ in 0..8 {
        assert_eq!(status(&ep, &key(), "web9", PeerKind::Minion), "denied");
    }
    assert_eq!(status(&ep, &real, "web9", PeerKind::Minion), "denied");
    let listed = keys(&master);
    assert!(
        listed.iter().any(|k| k.3 == fp(&real)),
        "the real key is not listed: {listed:?}"
    );
    for _ in 0..8 {
        assert_eq!(status(&ep, &key(), "web9", PeerKind::Minion), "denied");
    }
    let listed = keys(&master);
    assert!(
        !listed.iter().any(|k| k.3 == fp(&real)),
        "the real key was pushed out: {listed:?}"
    );
    let out = master.tend(&["keys", "list"]);
    assert!(
        text(&out).contains("dropped: 9 more denied key(s) of web9"),
        "{}",
        text(&out)
    );
    let out = master.tend(&["keys", "accept", "web9", "--fingerprint", &fp(&real)]);
    assert!(
        out.status.success() && text(&out).contains("pre-approved"),
        "{}",
        text(&out)
    );
    assert!(
        keys(&master)
            .iter()
            .any(|k| k.0 == "web9" && k.2 == "preapproved" && k.3 == fp(&real))
    );
    assert_eq!(status(&ep, &real, "web9", PeerKind::Minion), "welcome");
    assert_eq!(status(&ep, &first, "web9", PeerKind::Minion), "denied");
    assert!(
        !keys(&master).iter().any(|k| k.2 == "preapproved"),
        "a pre-approval is used once"
    );
}
