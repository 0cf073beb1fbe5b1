//! File modes, written as octal strings (`"0644"`) in state files.
//!
//! A mode is never an integer in a state file: TOML's `644` would be
//! decimal 644, not the octal mode anyone meant.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A file mode: permission bits and set-id/sticky bits (`0o7777` at most).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

/// A mode string that is not an octal mode.
#[derive(Debug, Clone, thiserror::Error)]
#[error("mode {0:?} is not an octal mode of 3 or 4 digits, like \"0644\"")]
pub struct ModeError(String);

impl Mode {
    /// Parses `"0644"`, `"644"` or `"0o644"`.
    pub fn parse(s: &str) -> Result<Self, ModeError> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        if digits.is_empty()
            || digits.len() > 4
            || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
        {
            return Err(ModeError(s.to_string()));
        }
        // At most four octal digits: always fits.
        u32::from_str_radix(digits, 8)
            .map(Mode)
            .map_err(|_| ModeError(s.to_string()))
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Mode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an octal mode as a string, like \"0644\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Mode, E> {
                Mode::parse(s).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Mode, E> {
                Err(E::custom(format!(
                    "mode {n} is a number; write it as a string, like \"0644\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_octal_strings_only() {
        assert_eq!(Mode::parse("0644").unwrap(), Mode(0o644));
        assert_eq!(Mode::parse("755").unwrap(), Mode(0o755));
        assert_eq!(Mode::parse("0o600").unwrap(), Mode(0o600));
        assert!(Mode::parse("0999").is_err());
        assert!(Mode::parse("").is_err());
        assert!(Mode::parse("12345").is_err());
        assert_eq!(Mode(0o644).to_string(), "0644");
    }
}
