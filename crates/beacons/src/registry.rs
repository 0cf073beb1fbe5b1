//! From `[[beacon]]` tables in minion.toml to running beacons.
//!
//! ```toml
//! [[beacon]]
//! name = "motd"        # this instance; several instances of a type are fine
//! type = "file"
//! paths = ["/etc/motd"]
//! ```

use std::collections::HashSet;

use crate::Beacon;
use crate::config::ConfigError;

/// One `[[beacon]]` table: its common keys, and the rest for its type.
pub struct BeaconSpec {
    /// The instance's name (`name = "..."`).
    pub name: String,
    /// Its type (`type = "..."`).
    pub kind: String,
    /// Built and validated, ready to run.
    pub beacon: Box<dyn Beacon>,
    /// `rate_limit = "N/period"`: applied to the beacon's [`crate::Emitter`].
    pub rate_limit: Option<(u64, std::time::Duration)>,
}

/// A `[[beacon]]` table that cannot be used: in which file, which beacon
/// (by name, or `#n` when it has none), and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: beacon {beacon:?}: {problem}")]
pub struct BeaconError {
    /// The config file.
    pub file: String,
    /// The beacon's name, or `#n` (its place in the file).
    pub beacon: String,
    /// What is wrong, naming the key.
    pub problem: ConfigError,
}

/// A beacon type's `build`: its own keys (the common ones are taken out),
/// validated and made a beacon.
type Builder = fn(toml::Table) -> Result<Box<dyn Beacon>, ConfigError>;

/// Every beacon type, by the name used in `type = "..."`.
fn registry() -> &'static [(&'static str, Builder)] {
    use crate::system::*;
    &[
        ("file", crate::file::build),
        ("cpu", cpu::build),
        ("load", load::build),
        ("memory", memory::build_memory),
        ("swap", memory::build_swap),
        ("disk", disk::build),
        ("network", network::build),
        ("process", process::build),
        ("service", service::build),
        ("connection", connection::build),
        ("login", login::build),
        ("command", command::build),
        ("heartbeat", heartbeat::build),
    ]
}

/// Validates every `[[beacon]]` table of config file `file` and builds the
/// enabled ones. The first mistake stops it, naming the beacon and key.
pub fn build_all(file: &str, tables: Vec<toml::Table>) -> Result<Vec<BeaconSpec>, BeaconError> {
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, mut table) in tables.into_iter().enumerate() {
        let label = match table.get("name") {
            Some(toml::Value::String(n)) => n.clone(),
            _ => format!("#{}", i + 1),
        };
        let err = |problem: ConfigError| BeaconError {
            file: file.to_string(),
            beacon: label.clone(),
            problem,
        };
        let name = match table.remove("name") {
            Some(toml::Value::String(n)) => n,
            Some(_) => return Err(err(ConfigError::rule("name", "must be a string"))),
            None => return Err(err(ConfigError::Missing("name"))),
        };
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err(err(ConfigError::rule(
                "name",
                "must be letters, digits, '_', '-' or '.'",
            )));
        }
        if !names.insert(name.clone()) {
            return Err(err(ConfigError::DuplicateName));
        }
        let kind = match table.remove("type") {
            Some(toml::Value::String(t)) => t,
            Some(_) => return Err(err(ConfigError::rule("type", "must be a string"))),
            None => return Err(err(ConfigError::Missing("type"))),
        };
        let enabled = match table.remove("enabled") {
            None => true,
            Some(toml::Value::Boolean(b)) => b,
            Some(_) => return Err(err(ConfigError::rule("enabled", "must be true or false"))),
        };
        let Some((_, builder)) = registry().iter().find(|(k, _)| *k == kind) else {
            let known: Vec<_> = registry().iter().map(|(k, _)| *k).collect();
            return Err(err(ConfigError::UnknownType {
                kind,
                known: known.join(", "),
            }));
        };
        let rate_limit = match table.remove("rate_limit") {
            Some(v) => Some(crate::config::rate_limit(&v).map_err(err)?),
            None => None,
        };
        let beacon = builder(table).map_err(err)?;
        if enabled {
            out.push(BeaconSpec {
                name,
                kind,
                beacon,
                rate_limit,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(text: &str) -> Vec<toml::Table> {
        #[derive(serde::Deserialize)]
        struct F {
            beacon: Vec<toml::Table>,
        }
        toml::from_str::<F>(text).unwrap().beacon
    }

    fn err(text: &str) -> String {
        match build_all("minion.toml", tables(text)) {
            Ok(_) => panic!("expected an error for {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_configs_name_the_beacon_and_key() {
        let e = err("[[beacon]]\nname = \"x\"\ntype = \"nope\"\n");
        assert!(
            e.contains("minion.toml") && e.contains("\"x\"") && e.contains("unknown beacon type"),
            "{e}"
        );
        let e = err("[[beacon]]\nname = \"x\"\ntype = \"file\"\npaths = [\"/tmp/a\"]\npath = 1\n");
        assert!(e.contains("unknown field `path`"), "{e}");
        let e = err("[[beacon]]\ntype = \"file\"\n");
        assert!(e.contains("missing key `name`"), "{e}");
        let e = err(
            "[[beacon]]\nname = \"a\"\ntype = \"file\"\npaths = [\"/x\"]\n[[beacon]]\nname = \"a\"\ntype = \"file\"\npaths = [\"/y\"]\n",
        );
        assert!(e.contains("same name"), "{e}");
        let e = err("[[beacon]]\nname = \"a\"\ntype = \"file\"\npaths = [\"relative\"]\n");
        assert!(e.contains("absolute"), "{e}");
    }

    #[test]
    fn disabled_beacons_are_validated_but_not_built() {
        let built = build_all(
            "m.toml",
            tables(
                "[[beacon]]\nname = \"a\"\ntype = \"file\"\nenabled = false\npaths = [\"/x\"]\n",
            ),
        )
        .unwrap();
        assert!(built.is_empty());
    }

    /// Every registered type is documented in docs/reference.md under its
    /// own heading (tests/tests/reference.rs checks the keys too, through
    /// the built minion).
    #[test]
    fn every_beacon_type_has_a_reference_section() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/reference.md");
        let doc = std::fs::read_to_string(path).expect("docs/reference.md");
        let headings: HashSet<&str> = doc.lines().map(str::trim_end).collect();
        let missing: Vec<_> = registry()
            .iter()
            .map(|(kind, _)| format!("### beacon: {kind}"))
            .filter(|h| !headings.contains(h.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "docs/reference.md has no section for: {missing:?}"
        );
    }
}
