//! Rule files as a user writes them: what loads, what is refused and with
//! which words, and what an event matches.

use super::*;

fn rules(text: &str) -> Result<Rules, RuleError> {
    Rules::from_texts(&[("r.toml".into(), text.into())])
}

fn event(tag: &str, data: &str, cause: u64) -> Event {
    Event {
        minion: "web1".into(),
        seq: 1,
        tag: tag.into(),
        time_us: 0,
        data: data.as_bytes().to_vec(),
        cause,
    }
}

const RESTORE: &str = r#"
    [[rule]]
    name = "restore"
    on = "minion/*/beacon/motd/*"
    when = 'event.data.kind != "deleted"'
    [[rule.action]]
    apply = ["motd"]
"#;

fn holds(r: &Rules, e: &Event) -> Vec<bool> {
    r.matches(e).iter().map(|m| m.holds).collect()
}

#[test]
fn matches_globs_and_conditions() {
    let r = rules(RESTORE).unwrap();
    assert_eq!(
        holds(
            &r,
            &event(
                "minion/web1/beacon/motd/etc/motd",
                r#"{"kind":"modified"}"#,
                0
            )
        ),
        vec![true]
    );
    assert_eq!(
        r.get(0).actions,
        vec![Action::Apply {
            target: None,
            states: vec!["motd".into()],
            test: false
        }]
    );
    assert_eq!(
        holds(
            &r,
            &event(
                "minion/web1/beacon/motd/etc/motd",
                r#"{"kind":"deleted"}"#,
                0
            )
        ),
        vec![false]
    );
    assert!(
        r.matches(&event(
            "minion/web1/beacon/other/x",
            r#"{"kind":"modified"}"#,
            0
        ))
        .is_empty()
    );
}

#[test]
fn caused_events_are_ignored_unless_asked_for() {
    let r = rules(RESTORE).unwrap();
    assert!(
        r.matches(&event(
            "minion/web1/beacon/motd/etc/motd",
            r#"{"kind":"modified"}"#,
            9
        ))
        .is_empty()
    );
    let opted =
        rules(&RESTORE.replace("name = \"restore\"", "name = \"restore\"\ncaused = true")).unwrap();
    assert_eq!(
        opted
            .matches(&event(
                "minion/web1/beacon/motd/etc/motd",
                r#"{"kind":"modified"}"#,
                9
            ))
            .len(),
        1
    );
}

#[test]
fn groups_by_fields() {
    let r = rules(
        "[[rule]]\nname = \"g\"\non = \"*\"\ngroup_by = [\"minion\", \"data.user.name\"]\n[[rule.action]]\nfire = \"x\"\n",
    )
    .unwrap();
    let e = event("t", r#"{"user":{"name":"alice"}}"#, 0);
    assert_eq!(group_key(r.get(0), &e), "web1\u{1f}alice");
}

fn err(text: &str) -> String {
    rules(text).err().expect("an error").to_string()
}

#[test]
fn a_deeply_nested_condition_is_refused_not_a_stack_overflow() {
    let act = "[[rule.action]]\napply = [\"s\"]\n";
    let rule = |when: &str| format!("[[rule]]\nname = \"x\"\non = \"a\"\nwhen = {when:?}\n{act}");
    // Found by fuzzing: twelve parentheses overflowed a 2 MiB stack.
    for deep in [
        format!("{}event.data.x{} == 1", "(".repeat(12), ")".repeat(12)),
        format!("{}true", "!".repeat(40)),
        format!("[{}1{}]", "[".repeat(20), "]".repeat(20)),
    ] {
        let e = err(&rule(&deep));
        assert!(e.contains("nests deeper than"), "{e}");
    }
    // Brackets and dashes in a string do not count; real nesting works.
    let fine = r#"event.data.path == "((((((((((----------))))))))))" && ((((event.seq > 1))))"#;
    assert!(rules(&rule(fine)).is_ok());
    // The fuzzer's own input is refused with an error, not a crash.
    let found = include_str!("../../../../fuzz/corpus/rules/regression-cel-deep-nesting");
    assert!(rules(found).is_err());
}

#[test]
fn bad_rules_name_file_rule_and_key() {
    let act = "[[rule.action]]\napply = [\"s\"]\n";
    let e = err(&format!(
        "[[rule]]\nname = \"x\"\non = \"a\"\nwehn = \"true\"\n{act}"
    ));
    assert!(
        e.contains("r.toml") && e.contains("\"x\"") && e.contains("wehn"),
        "{e}"
    );
    let e = err(&format!(
        "[[rule]]\nname = \"x\"\non = \"a\"\nwhen = \"event.data.kind ==\"\n{act}"
    ));
    assert!(e.contains("`when`"), "{e}");
    let e = err(&format!("[[rule]]\nname = \"x\"\non = \"a[\"\n{act}"));
    assert!(e.contains("bad glob"), "{e}");
    let e = err("[[rule]]\nname = \"x\"\non = \"a\"\n");
    assert!(e.contains("do nothing"), "{e}");
    let e = err(&format!(
        "[[rule]]\nname = \"x\"\non = \"a\"\ncount = 5\n{act}"
    ));
    assert!(e.contains("`window`"), "{e}");
    let e = err(&format!(
        "[[rule]]\nname = \"x\"\non = \"a\"\ncount = 5\nwindow = \"soon\"\n{act}"
    ));
    assert!(e.contains("`window`") && e.contains("duration"), "{e}");
    let e = err(&format!(
        "[[rule]]\nname = \"x\"\non = \"a\"\nfor = \"30s\"\n{act}"
    ));
    assert!(e.contains("`for` needs a `when`"), "{e}");
    let e = err(&format!(
        "[[rule]]\nname = \"x\"\non = \"a\"\nmax_rate = \"lots\"\n{act}"
    ));
    assert!(e.contains("`max_rate`"), "{e}");
    let e =
        err("[[rule]]\nname = \"x\"\non = \"a\"\n[[rule.action]]\napply = [\"s\"]\nfire = \"t\"\n");
    assert!(e.contains("exactly one"), "{e}");
    let e = err("[[rule]]\nname = \"x\"\non = \"a\"\n[[rule.action]]\nwebhook = \"ftp://x\"\n");
    assert!(e.contains("http"), "{e}");
    let e =
        err("[[rule]]\nname = \"x\"\non = \"a\"\n[[rule.action]]\nfire = \"t\"\ntarget = \"w\"\n");
    assert!(e.contains("`target` does not apply"), "{e}");
    let e = err(&format!(
        "[[rule]]\nname = \"x\"\non = \"a\"\ngroup_by = [\"user\"]\n{act}"
    ));
    assert!(e.contains("group_by"), "{e}");
}

#[test]
fn run_takes_an_argument_list_and_a_shell_is_asked_for() {
    let rule =
        |action: &str| format!("[[rule]]\nname = \"x\"\non = \"a\"\n[[rule.action]]\n{action}\n");
    let e = err(&rule("run = \"echo {{ event.data.path }}\""));
    assert!(
        e.contains("no longer run by a shell") && e.contains("run = [") && e.contains("shell ="),
        "{e}"
    );
    let command = |action: &str| match &rules(&rule(action)).unwrap().get(0).actions[0] {
        Action::Run { command, .. } => command.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        command("run = [\"logger\", \"{{ event.data.path }}\"]"),
        RunCommand::Argv(vec!["logger".into(), "{{ event.data.path }}".into()])
    );
    assert_eq!(
        command("shell = \"echo {{ event.data.path }} | logger\""),
        RunCommand::Shell("echo {{ event.data.path }} | logger".into())
    );
    // Quotes around an inserted value would undo its quoting.
    for quoted in [
        "shell = \"echo '{{ event.data.path }}'\"",
        "shell = 'echo \"new: {{ event.data.path }}\"'",
        "shell = \"echo `{{ event.data.path }}`\"",
    ] {
        let e = err(&rule(quoted));
        assert!(
            e.contains("inside") && e.contains("quotes"),
            "{quoted}: {e}"
        );
    }
    // Quotes elsewhere, and escaped quote characters, are fine.
    command("shell = \"printf '%s\\\\n' {{ event.data.path }} \\\\' {{ event.minion }}\"");
    let e = err(&rule("shell = \"  \""));
    assert!(e.contains("empty"), "{e}");
    let e = err(&rule("shell = \"echo hi\"\nrun = [\"echo\"]"));
    assert!(e.contains("exactly one"), "{e}");
}
