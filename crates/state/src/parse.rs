//! Reading a state file: TOML where every top-level table is one state,
//! keyed by its id, with a `type`, that type's fields, and requisites.
//!
//! ```toml
//! [nginx-conf]
//! type = "file.managed"
//! path = "/etc/nginx/nginx.conf"
//! source = "files/nginx.conf"
//! mode = "0644"
//!
//! [nginx]
//! type = "service.running"
//! name = "nginx"
//! watch = ["nginx-conf"]
//! ```
//!
//! Every mistake is reported with the file, the state id and the field.

use crate::types::{Spec, TYPES};
use crate::{Requisites, State, StateError};

const REQUISITES: [&str; 4] = ["require", "watch", "onchanges", "onfail"];

/// Parses the text of state file `file` (state name `sls`). A mistake in a
/// state names the file with the line (and column) of the key it is about,
/// or of the state's `[id]`: `web.toml:4:1: state "m": ...`.
pub fn parse_state_file(file: &str, sls: &str, text: &str) -> Result<Vec<State>, StateError> {
    parse(file, sls, text).map_err(|e| match e {
        StateError::Invalid {
            file: f,
            state,
            message,
        } if f == file => StateError::Invalid {
            file: match locate(text, &state, &message) {
                Some((line, col)) => format!("{file}:{line}:{col}"),
                None => f,
            },
            state,
            message,
        },
        other => other,
    })
}

/// Line and column (from 1) of the key a message about state `id` names
/// (the first in backquotes), or of the state's `[id]` header.
fn locate(text: &str, id: &str, message: &str) -> Option<(usize, usize)> {
    let key = message.split('`').nth(1).filter(|k| !k.is_empty());
    let headers = [format!("[{id}]"), format!("[{id:?}]"), format!("['{id}']")];
    let mut lines = text.lines().enumerate();
    let (header, _) = lines.find(|(_, l)| headers.iter().any(|h| l.trim() == h))?;
    if let Some(key) = key {
        for (n, line) in lines {
            let trimmed = line.trim_start();
            if trimmed.starts_with('[') {
                break;
            }
            if let Some(rest) = trimmed.strip_prefix(key)
                && rest.trim_start().starts_with('=')
            {
                return Some((n + 1, line.len() - trimmed.len() + 1));
            }
        }
    }
    let indent = text.lines().nth(header)?;
    Some((header + 1, indent.len() - indent.trim_start().len() + 1))
}

fn parse(file: &str, sls: &str, text: &str) -> Result<Vec<State>, StateError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| StateError::File {
            file: file.to_string(),
            message: format!("not valid TOML: {}", e.to_string().trim_end()),
        })?;
    let mut out = Vec::with_capacity(table.len());
    for (id, value) in table {
        let invalid = |message: String| StateError::Invalid {
            file: file.to_string(),
            state: id.clone(),
            message,
        };
        if !is_id(&id) {
            return Err(invalid(
                "a state id must be 1 to 256 printable characters".into(),
            ));
        }
        let toml::Value::Table(mut fields) = value else {
            return Err(invalid(
                "must be a table (`[id]` followed by its fields)".into(),
            ));
        };
        let mut requisites = Requisites::default();
        for key in REQUISITES {
            let ids = match fields.remove(key) {
                None => continue,
                Some(toml::Value::String(s)) => vec![s],
                Some(toml::Value::Array(a)) => a
                    .into_iter()
                    .map(|v| match v {
                        toml::Value::String(s) => Ok(s),
                        _ => Err(invalid(format!(
                            "field `{key}` must list state ids (strings)"
                        ))),
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => {
                    return Err(invalid(format!(
                        "field `{key}` must be a state id or a list of them"
                    )));
                }
            };
            let slot = match key {
                "require" => &mut requisites.require,
                "watch" => &mut requisites.watch,
                "onchanges" => &mut requisites.onchanges,
                _ => &mut requisites.onfail,
            };
            *slot = ids;
        }
        let secret = match fields.remove("secret") {
            None => false,
            Some(toml::Value::Boolean(b)) => b,
            Some(_) => return Err(invalid("field `secret` must be true or false".into())),
        };
        match fields.get("type") {
            None => {
                return Err(invalid(format!(
                    "missing field `type` (one of: {})",
                    TYPES.join(", ")
                )));
            }
            Some(toml::Value::String(t)) if !TYPES.contains(&t.as_str()) => {
                return Err(invalid(format!(
                    "unknown state type {t:?} (known: {})",
                    TYPES.join(", ")
                )));
            }
            Some(toml::Value::String(_)) => {}
            Some(_) => return Err(invalid("field `type` must be a string".into())),
        }
        let spec: Spec = toml::Value::Table(fields)
            .try_into()
            .map_err(|e: toml::de::Error| {
                let message = e.message().to_string();
                if message.starts_with("unknown field") {
                    invalid(format!(
                        "{message}; or one every state takes: `type`, `secret`, `{}`",
                        REQUISITES.join("`, `")
                    ))
                } else {
                    invalid(message)
                }
            })?;
        spec.validate(file, &id)?;
        out.push(State {
            id,
            sls: sls.to_string(),
            spec,
            requisites,
            secret,
        });
    }
    Ok(out)
}

fn is_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 256 && !id.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_in_declaration_order_with_requisites() {
        let states = parse_state_file(
            "x.toml",
            "x",
            r#"
            [b]
            type = "file.managed"
            path = "/tmp/b"
            contents = "hi"

            [a]
            type = "cmd.run"
            command = "true"
            require = "b"
            onchanges = ["b"]
            "#,
        )
        .unwrap();
        assert_eq!(states[0].id, "b");
        assert_eq!(states[1].id, "a");
        assert_eq!(states[1].requisites.require, vec!["b"]);
        assert_eq!(states[1].requisites.onchanges, vec!["b"]);
    }

    fn err(text: &str) -> String {
        parse_state_file("web.toml", "web", text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_file_state_and_field() {
        let e = err("[m]\ntype = \"file.managed\"\npath = \"/x\"\ncontent = \"typo\"\n");
        assert!(
            e.contains("web.toml") && e.contains("\"m\"") && e.contains("content"),
            "{e}"
        );
        let e = err("[m]\ntype = \"file.magic\"\npath = \"/x\"\n");
        assert!(e.contains("unknown state type \"file.magic\""), "{e}");
        let e = err("[m]\npath = \"/x\"\n");
        assert!(e.contains("missing field `type`"), "{e}");
        let e = err("[m]\ntype = \"file.managed\"\ncontents = \"x\"\n");
        assert!(e.contains("path"), "{e}");
        let e =
            err("[m]\ntype = \"file.managed\"\npath = \"/x\"\ncontents = \"x\"\nmode = \"999\"\n");
        assert!(e.contains("mode"), "{e}");
        let e = err("[m]\ntype = \"file.managed\"\npath = \"/x\"\ncontents = \"x\"\nmode = 644\n");
        assert!(e.contains("as a string"), "{e}");
        let e = err("[m]\ntype = \"file.managed\"\npath = \"rel\"\ncontents = \"x\"\n");
        assert!(e.contains("absolute"), "{e}");
        let e = err("[m]\ntype = \"file.line\"\npath = \"/x\"\nmatch = \"(\"\nline = \"a\"\n");
        assert!(e.contains("`match`"), "{e}");
        let e = err("[m]\ntype = \"cmd.run\"\ncommand = \"\"\n");
        assert!(e.contains("`command`"), "{e}");
        let e = err("[m]\ntype = \"pkg.installed\"\nname = \"Bad Name\"\n");
        assert!(e.contains("`name`"), "{e}");
        let e = err("[m]\ntype = \"cmd.run\"\ncommand = \"x\"\nrequire = 3\n");
        assert!(e.contains("`require`"), "{e}");
        let e = err("not toml [");
        assert!(e.contains("web.toml: not valid TOML"), "{e}");
    }

    #[test]
    fn a_mistake_in_a_state_has_its_line() {
        // The key the message is about.
        let e = err(
            "[ok]\ntype = \"cmd.run\"\ncommand = \"true\"\n\n[m]\ntype = \"file.managed\"\npath = \"/x\"\n  content = \"typo\"\n",
        );
        assert!(
            e.starts_with("web.toml:8:3: state \"m\": unknown field `content`"),
            "{e}"
        );
        // No key: the state's header.
        let e = err("[a]\ntype = \"cmd.run\"\ncommand = \"true\"\n[b]\npath = \"/x\"\n");
        assert!(
            e.starts_with("web.toml:4:1: state \"b\": missing field `type`"),
            "{e}"
        );
    }
}
