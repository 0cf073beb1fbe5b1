//! docs/reference.md documents every config key the code accepts.
//!
//! The keys are not listed here by hand: the daemons are asked. Each scope
//! (master.toml, a beacon type, a state type, a rule, ...) is given an
//! unknown key, and the daemon's own refusal lists the keys it expected.
//! The beacon and state types come from the same source (the refusal of an
//! unknown type). So a key added to the code and not to the reference
//! fails this test.

use std::path::Path;

use tend_e2e::run_daemon;

const BOGUS: &str = "bogus_key_zz";

/// The keys an "unknown field" refusal says were expected: the scope's
/// own, and those every item of its kind takes (after "; or one every").
fn expected_keys(err: &str) -> (Vec<String>, Vec<String>) {
    let line = err
        .lines()
        .find(|l| l.contains(&format!("unknown field `{BOGUS}`")))
        .unwrap_or_else(|| panic!("no refusal of the unknown key in:\n{err}"));
    let after = line
        .split_once(&format!("unknown field `{BOGUS}`"))
        .unwrap()
        .1;
    let (own, common) = match after.split_once("; or one every") {
        Some((o, c)) => (o, c),
        None => (after, ""),
    };
    let ticks = |s: &str| -> Vec<String> {
        s.split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, k)| k.to_string())
            .collect()
    };
    (ticks(own), ticks(common))
}

/// The known types an "unknown ... type" refusal lists.
fn known_types(err: &str) -> Vec<String> {
    let start = err
        .find("(known: ")
        .unwrap_or_else(|| panic!("no list of types in:\n{err}"));
    let rest = &err[start + "(known: ".len()..];
    let end = rest.find(')').expect("end of the list");
    rest[..end].split(", ").map(str::to_string).collect()
}

/// Runs `program --config FILE --check-config`; its stderr.
fn check(program: &str, config: &Path) -> String {
    let (code, err) = run_daemon(program, config, &["--check-config"]);
    assert_ne!(code, 0, "{program} accepted a bogus key");
    err
}

/// The text of the section whose heading is exactly `heading`, up to the
/// next heading of the same or a higher level.
fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let start = doc
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("docs/reference.md has no section {heading:?}"));
    let body = &doc[start + heading.len() + 2..];
    let end = body
        .match_indices("\n#")
        .find(|(i, _)| {
            let hashes = body[i + 1..].chars().take_while(|c| *c == '#').count();
            hashes <= level
        })
        .map_or(body.len(), |(i, _)| i);
    &body[..end]
}

struct Missing(Vec<String>);

impl Missing {
    fn check(&mut self, doc: &str, heading: &str, keys: &[String]) {
        let text = section(doc, heading);
        for k in keys {
            if !text.contains(&format!("\n| `{k}` |")) {
                self.0.push(format!("{heading}: `{k}`"));
            }
        }
    }
}

#[test]
fn every_config_key_in_the_code_is_in_the_reference() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/reference.md"))
            .expect("docs/reference.md");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let master = dir.join("master.toml");
    let minion = dir.join("minion.toml");
    std::fs::create_dir_all(dir.join("states")).unwrap();
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    let write = |p: &Path, text: &str| std::fs::write(p, text).unwrap();
    let mut missing = Missing(Vec::new());
    let mut scopes = 0;

    // master.toml and its [log].
    write(&master, &format!("{BOGUS} = 1\n"));
    let (keys, _) = expected_keys(&check("tend-master", &master));
    missing.check(&doc, "## master.toml", &keys);
    write(&master, &format!("[log]\n{BOGUS} = 1\n"));
    let (keys, _) = expected_keys(&check("tend-master", &master));
    missing.check(&doc, "### [log]", &keys);

    // minion.toml, [outbox], [log].
    write(&minion, &format!("{BOGUS} = 1\n"));
    let (keys, _) = expected_keys(&check("tend-minion", &minion));
    missing.check(&doc, "## minion.toml", &keys);
    write(&minion, &format!("[outbox]\n{BOGUS} = 1\n"));
    let (keys, _) = expected_keys(&check("tend-minion", &minion));
    missing.check(&doc, "### [outbox]", &keys);
    write(&minion, &format!("[log]\n{BOGUS} = 1\n"));
    let (keys, _) = expected_keys(&check("tend-minion", &minion));
    missing.check(&doc, "### [log]", &keys);
    scopes += 5;

    // Every beacon type, and the keys every beacon takes.
    write(
        &minion,
        "[[beacon]]\nname = \"b\"\ntype = \"no-such-type\"\n",
    );
    let types = known_types(&check("tend-minion", &minion));
    assert!(types.len() >= 13, "{types:?}");
    for t in &types {
        write(
            &minion,
            &format!("[[beacon]]\nname = \"b\"\ntype = {t:?}\n{BOGUS} = 1\n"),
        );
        let (own, common) = expected_keys(&check("tend-minion", &minion));
        missing.check(&doc, &format!("### beacon: {t}"), &own);
        missing.check(&doc, "### Every beacon", &common);
        scopes += 1;
    }

    // Rule files: a rule and an action.
    write(
        &master,
        "state_root = \"states\"\nreactor_dir = \"rules\"\n",
    );
    let rule = dir.join("rules/r.toml");
    write(
        &rule,
        &format!(
            "[[rule]]\nname = \"r\"\non = \"x\"\n{BOGUS} = 1\n[[rule.action]]\napply = [\"s\"]\n"
        ),
    );
    let (keys, _) = expected_keys(&check("tend-master", &master));
    missing.check(&doc, "### [[rule]]", &keys);
    write(
        &rule,
        &format!(
            "[[rule]]\nname = \"r\"\non = \"x\"\n[[rule.action]]\n{BOGUS} = 1\napply = [\"s\"]\n"
        ),
    );
    let (keys, _) = expected_keys(&check("tend-master", &master));
    missing.check(&doc, "### [[rule.action]]", &keys);
    std::fs::remove_file(&rule).unwrap();
    scopes += 2;

    // Every state type, and the keys every state takes.
    let state = dir.join("states/s.toml");
    write(&state, "[x]\ntype = \"no-such-type\"\n");
    let types = known_types(&check("tend-master", &master));
    assert!(types.len() >= 10, "{types:?}");
    for t in &types {
        write(&state, &format!("[x]\n{BOGUS} = 1\ntype = {t:?}\n"));
        let (own, common) = expected_keys(&check("tend-master", &master));
        missing.check(&doc, &format!("### state: {t}"), &own);
        missing.check(&doc, "### Every state", &common);
        scopes += 1;
    }
    std::fs::remove_file(&state).unwrap();

    // The top file.
    write(
        &dir.join("states/top.toml"),
        &format!("[[target]]\nmatch = \"*\"\nstates = []\n{BOGUS} = 1\n"),
    );
    let (keys, _) = expected_keys(&check("tend-master", &master));
    missing.check(&doc, "### [[target]]", &keys);
    scopes += 1;

    missing.0.dedup();
    assert!(
        missing.0.is_empty(),
        "keys the code accepts that docs/reference.md does not document ({} scopes checked):\n{}",
        scopes,
        missing.0.join("\n")
    );
}
