//! Reading a state file: TOML where every top-level table is one state,
//! keyed by its id, with a `type` and that type's fields.
//!
//! ```toml
//! [motd]
//! type = "file.managed"
//! path = "/etc/motd"
//! source = "files/motd"
//! mode = "0644"
//! ```
//!
//! Every mistake is reported with the file, the state id and the field.

use serde::Deserialize;

use crate::{Mode, StateError};

/// A state as declared in a file, before the master resolves its sources.
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    pub id: String,
    pub spec: DeclaredSpec,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DeclaredSpec {
    FileManaged(FileManagedDecl),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileManagedDecl {
    pub path: String,
    #[serde(default)]
    pub contents: Option<String>,
    /// A file in the state tree, relative to its root.
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub makedirs: bool,
}

const TYPES: &str = "file.managed";

/// Parses the text of state file `file`.
pub fn parse_state_file(file: &str, text: &str) -> Result<Vec<Declared>, StateError> {
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
        check_id(&id).map_err(invalid)?;
        let toml::Value::Table(mut fields) = value else {
            return Err(invalid(
                "must be a table (`[id]` followed by its fields)".into(),
            ));
        };
        let kind = match fields.remove("type") {
            Some(toml::Value::String(t)) => t,
            Some(_) => return Err(invalid("field `type` must be a string".into())),
            None => return Err(invalid(format!("missing field `type` (one of: {TYPES})"))),
        };
        let spec = match kind.as_str() {
            "file.managed" => {
                let decl: FileManagedDecl = toml::Value::Table(fields)
                    .try_into()
                    .map_err(|e: toml::de::Error| invalid(e.message().to_string()))?;
                check_absolute(&decl.path).map_err(&invalid)?;
                match (&decl.contents, &decl.source) {
                    (Some(_), Some(_)) => {
                        return Err(invalid(
                            "give either `contents` or `source`, not both".into(),
                        ));
                    }
                    (None, None) => {
                        return Err(invalid("missing field `contents` or `source`".into()));
                    }
                    _ => {}
                }
                DeclaredSpec::FileManaged(decl)
            }
            other => {
                return Err(invalid(format!(
                    "unknown state type {other:?} (known: {TYPES})"
                )));
            }
        };
        out.push(Declared { id, spec });
    }
    Ok(out)
}

fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
        return Err("a state id must be 1 to 256 printable characters".into());
    }
    Ok(())
}

fn check_absolute(path: &str) -> Result<(), String> {
    if path.contains('\0') {
        return Err("field `path` contains a NUL byte".into());
    }
    if !path.starts_with('/') {
        return Err(format!("field `path` must be absolute, got {path:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_in_declaration_order() {
        let states = parse_state_file(
            "x.toml",
            r#"
            [b]
            type = "file.managed"
            path = "/tmp/b"
            contents = "hi"

            [a]
            type = "file.managed"
            path = "/tmp/a"
            source = "files/a"
            mode = "0600"
            "#,
        )
        .unwrap();
        assert_eq!(states[0].id, "b");
        assert_eq!(states[1].id, "a");
    }

    fn err(text: &str) -> String {
        parse_state_file("web.toml", text).unwrap_err().to_string()
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
        let e = err("[m]\ntype = \"file.managed\"\npath = \"rel\"\ncontents = \"x\"\n");
        assert!(e.contains("absolute"), "{e}");
        let e = err("not toml [");
        assert!(e.contains("web.toml: not valid TOML"), "{e}");
    }
}
