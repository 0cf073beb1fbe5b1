//! Key acceptance and identity: a name never changes key silently, a glob
//! never touches denied or accepted keys, a pre-seeded fingerprint is one
//! identity, and secrets are never targeted by what a minion says of itself.

#[allow(unused_imports)]
use super::*;
