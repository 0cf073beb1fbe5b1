//! Salt habits: arguments a Salt user types out of habit (`test=True`,
//! `saltenv=base`, `pillar='{...}'`, `state.apply`), recognised before
//! anything is sent, with what tend calls them instead. Without this they
//! would reach the master as state names and come back as a failed job.

/// Why `arg`, given where `tend apply` takes state names, is a Salt habit,
/// and what to write instead; none for what may be a state name.
pub fn apply_hint(arg: &str) -> Option<String> {
    if let Some((key, value)) = arg.split_once('=') {
        let hint = match key.to_ascii_lowercase().as_str() {
            "test" if is_true(value) => "tend's dry run is the flag --test".to_string(),
            "test" => "a real run is the default: leave it out".to_string(),
            "saltenv" | "env" => "tend has one state tree (state_dir in the master's \
                                  config): there are no environments to pick"
                .to_string(),
            "pillar" => "tend has no pillar: state templates see the minion's facts \
                         ({{ facts.NAME }}) and, in a rule's apply, the event \
                         ({{ event.data.FIELD }})"
                .to_string(),
            "timeout" => format!("the timeout is the flag --timeout {value} (seconds)"),
            "queue" | "concurrent" => {
                "tend coalesces applies to one minion by itself: leave it out".to_string()
            }
            _ => "state names hold no `=`; tend apply takes TARGET STATE... and flags \
                  (tend apply --help)"
                .to_string(),
        };
        return Some(format!("{arg:?} is Salt's way of saying it: {hint}"));
    }
    match arg {
        "state.apply" | "state.sls" | "state.highstate" | "state.single" => Some(format!(
            "{arg:?} is Salt's function name: tend apply TARGET STATE... applies states \
             (none: what the top file gives each minion)"
        )),
        _ => None,
    }
}

fn is_true(value: &str) -> bool {
    matches!(
        value.to_ascii_lowercase().as_str(),
        "true" | "1" | "yes" | "on"
    )
}

#[cfg(test)]
mod tests {
    use super::apply_hint;

    #[test]
    fn salt_arguments_get_tends_words() {
        assert!(apply_hint("test=True").unwrap().contains("--test"));
        assert!(
            apply_hint("saltenv=base")
                .unwrap()
                .contains("one state tree")
        );
        assert!(
            apply_hint("pillar={\"a\": 1}")
                .unwrap()
                .contains("no pillar")
        );
        assert!(apply_hint("state.apply").is_some());
        assert_eq!(apply_hint("motd"), None);
        assert_eq!(apply_hint("web.nginx"), None);
    }
}
