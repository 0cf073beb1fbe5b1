//! Checks of keys several state types share: absolute paths, user and
//! group names, commands.

use crate::Command;

/// A key that serde accepted but is not usable.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    #[error("field `{key}` contains a NUL byte")]
    Nul { key: &'static str },
    #[error("field `{key}` must be an absolute path, got {path:?}")]
    NotAbsolute { key: &'static str, path: String },
    #[error("field `{key}`: {name:?} is not a user or group name")]
    NotOwnerName { key: &'static str, name: String },
    #[error("field `{key}` is an empty command")]
    EmptyCommand { key: &'static str },
}

/// `path`, from key `key`, is absolute and has no NUL byte.
pub(crate) fn absolute(key: &'static str, path: &str) -> Result<(), KeyError> {
    if path.contains('\0') {
        return Err(KeyError::Nul { key });
    }
    if !path.starts_with('/') {
        return Err(KeyError::NotAbsolute {
            key,
            path: path.to_string(),
        });
    }
    Ok(())
}

/// A user or group, when given, is a name or a number.
pub(crate) fn owner(key: &'static str, name: &Option<String>) -> Result<(), KeyError> {
    let Some(name) = name else { return Ok(()) };
    let ok = !name.is_empty()
        && name.len() <= 64
        && (name.bytes().all(|b| b.is_ascii_digit())
            || name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')));
    if ok {
        Ok(())
    } else {
        Err(KeyError::NotOwnerName {
            key,
            name: name.clone(),
        })
    }
}

/// A command is not empty and holds no NUL byte.
pub(crate) fn command(key: &'static str, c: &Command) -> Result<(), KeyError> {
    let empty = match c {
        Command::Shell(s) => s.trim().is_empty(),
        Command::Argv(a) => a.is_empty() || a[0].is_empty(),
    };
    if empty {
        return Err(KeyError::EmptyCommand { key });
    }
    let nul = match c {
        Command::Shell(s) => s.contains('\0'),
        Command::Argv(a) => a.iter().any(|s| s.contains('\0')),
    };
    if nul {
        return Err(KeyError::Nul { key });
    }
    Ok(())
}
