//! Rule files as a user writes them: what loads, what is refused and with
//! which words, and what an event matches.

use super::*;

fn rules(text: &str) -> Result<Rules, RuleErrors> {
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
        local_orders: Default::default(),
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

#[test]
fn conditions_are_checked_against_the_event_shape() {
    let act = "[[rule.action]]\nfire = \"y\"\n";
    let rule = |when: &str| format!("[[rule]]\nname = \"x\"\non = \"a\"\nwhen = {when:?}\n{act}");
    // A misspelt variable, a field an event does not have, a value that is
    // not true or false: refused at load, with what to write instead.
    let e = err(&rule("evnt.data.kind == \"x\""));
    assert!(
        e.contains("unknown name `evnt`") && e.contains("did you mean `event`"),
        "{e}"
    );
    let e = err(&rule("event.dta.kind == \"x\""));
    assert!(e.contains("`event.dta`") && e.contains("data"), "{e}");
    let e = err(&rule("event.data.kind"));
    assert!(
        e.contains("not true or false") && e.contains("event.data.kind == \""),
        "{e}"
    );
    for not_bool in [
        "event.tag",
        "event.seq + 1",
        "\"yes\"",
        "event.data",
        "event",
    ] {
        let e = err(&rule(not_bool));
        assert!(e.contains("not true or false"), "{not_bool}: {e}");
    }
    // What real rules write still loads.
    for fine in [
        "has(event.data.kind) && event.data.kind == \"failed\"",
        "event.tag.startsWith(\"minion/\") || event.minion in [\"a\", \"b\"]",
        "event.data.pids.exists(p, p > 1) && size(event.data.pids) < 3",
        "event.data.hot == true",
        "!event.data.ok",
        "event.data.kind == \"created\" && event.data.path.contains(\"/x\")",
        "event.data.items.all(i, i.size > 0)",
        "type(event.data.n) == int",
        "event.data.a > 1 ? true : false",
        "event.data[\"kind\"] == \"x\"",
    ] {
        assert!(
            rules(&rule(fine)).is_ok(),
            "{fine}: {:?}",
            rules(&rule(fine)).err()
        );
    }
}

#[test]
fn action_templates_are_compiled_at_load() {
    let rule =
        |action: &str| format!("[[rule]]\nname = \"x\"\non = \"a\"\n[[rule.action]]\n{action}\n");
    let e = err(&rule(r#"run = ["echo", "{{ event.data.path "]"#));
    assert!(
        e.contains("key `run`") && e.contains("does not compile"),
        "{e}"
    );
    let e = err(&rule(r#"shell = "echo {{ evnt.data.path }}""#));
    assert!(e.contains("key `shell`") && e.contains("`evnt`"), "{e}");
    let e = err(&rule(r#"apply = ["{% if %}"]"#));
    assert!(e.contains("key `apply`"), "{e}");
    let e = err(&rule(
        "fire = \"t\"\ndata = { path = \"{{ event.data.path \" }",
    ));
    assert!(e.contains("key `data`"), "{e}");
    let fine = r#"run = ["echo", "{{ event.data.path }} by {{ rule }} ({{ suppressed }})"]"#;
    assert!(rules(&rule(fine)).is_ok());
}

#[test]
fn every_problem_of_every_file_has_its_line() {
    let good = "[[rule]]\nname = \"ok\"\non = \"a\"\n[[rule.action]]\nfire = \"y\"\n";
    let files = [
        ("a.toml".to_string(), "[rule]\nname = \"x\"\n".to_string()),
        (
            "b.toml".to_string(),
            format!("{good}\n[[rule]]\nname = \"bad\"\non = \"a\"\nwhen = \"evnt.x == 1\"\n[[rule.action]]\nfire = \"y\"\n"),
        ),
        ("c.toml".to_string(), "[[rule]]\nname = \"q\nx".to_string()),
        (
            "d.toml".to_string(),
            "[[rule]]\nname = \"one\"\non = \"a\"\n[[rule.action]]\n\n[[rule]]\nname = \"two\"\non = \"a\"\nwehn = \"true\"\n[[rule.action]]\nfire = \"y\"\n".to_string(),
        ),
    ];
    let e = Rules::from_texts(&files).err().expect("refused");
    let lines: Vec<String> = e.problems().iter().map(|p| p.to_string()).collect();
    assert_eq!(lines.len(), 5, "{e}");
    assert!(
        lines[0].starts_with("a.toml:1:1:") && lines[0].contains("write [[rule]]"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("b.toml:10:1: rule \"bad\"") && lines[1].contains("evnt"),
        "{}",
        lines[1]
    );
    assert!(lines[2].starts_with("c.toml:3:2:"), "{}", lines[2]);
    assert!(
        lines[3].starts_with("d.toml:1:1: rule \"one\"")
            && lines[3].contains("an action is exactly one"),
        "{}",
        lines[3]
    );
    assert!(
        lines[4].starts_with("d.toml:6:1: rule \"two\"") && lines[4].contains("wehn"),
        "{}",
        lines[4]
    );
    assert_eq!(e.problems()[4].line(), Some(6));
}
