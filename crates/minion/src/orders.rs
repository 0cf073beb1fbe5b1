//! A minion's standing orders (issue 17): the rules the master compiled
//! for it (those triggered by its own events whose actions apply states to
//! itself), with those states rendered for it, signed by the master. The
//! minion keeps them on its disk (0600) and enforces them itself while it
//! has no session with any master.
//!
//! Orders are checked whenever they arrive and whenever they are read
//! back from disk: the signature must verify under a key this minion
//! pinned for one of its masters, the orders must name this minion, and
//! every rule must compile and only apply states to the minion itself.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use tend_bus::{MasterPin, fingerprint, verify_orders};
use tend_proto::v1::{OrdersBody, StandingOrders};
use tend_reactor::{Action, Rules};

/// The file in the data directory.
const FILE: &str = "orders";
/// A bigger file is refused unread.
const MAX_FILE: u64 = 16 << 20;

/// Orders checked and compiled.
pub struct Orders {
    pub body: OrdersBody,
    /// As they arrived (kept on disk as such, and checked again on read).
    pub sealed: StandingOrders,
    /// When this minion first took this version, microseconds.
    pub received_us: i64,
    pub rules: Arc<Rules>,
    /// Per rule: each action's states (a JSON array of states).
    pub states: HashMap<String, Vec<Vec<u8>>>,
}

/// Why orders were refused.
#[derive(Debug, thiserror::Error)]
pub enum OrdersError {
    #[error(
        "the orders are signed by key {0}, which is not one this minion pinned for a master: refused"
    )]
    NotPinned(String),
    #[error("the orders' signature does not verify: refused")]
    BadSignature,
    #[error("the orders' body does not decode: {0}")]
    Body(prost::DecodeError),
    #[error("the orders are for minion {0:?}, not this one: refused")]
    OtherMinion(String),
    #[error("the orders' rules do not compile here: {0}")]
    Rules(String),
    #[error("rule {rule:?} in the orders: {problem}")]
    Rule { rule: String, problem: String },
    #[error("the orders file {path}: {error}")]
    File { path: PathBuf, error: String },
}

impl Orders {
    /// Checks orders that arrived (or were read back): signed by a pinned
    /// master, for `minion`, every rule compiling and acting on this
    /// minion only.
    pub fn check(
        sealed: StandingOrders,
        minion: &str,
        pins: &[MasterPin],
        received_us: i64,
    ) -> Result<Self, OrdersError> {
        if !pins.iter().any(|p| p.matches(&sealed.master_key)) {
            return Err(OrdersError::NotPinned(fingerprint(&sealed.master_key)));
        }
        if !verify_orders(&sealed.master_key, &sealed.body, &sealed.signature) {
            return Err(OrdersError::BadSignature);
        }
        let body = OrdersBody::decode(sealed.body.as_slice()).map_err(OrdersError::Body)?;
        if body.minion != minion {
            return Err(OrdersError::OtherMinion(body.minion));
        }
        let texts: Vec<(String, String)> = body
            .orders
            .iter()
            .map(|o| (format!("standing orders, rule {}", o.rule), o.toml.clone()))
            .collect();
        let rules = Rules::from_texts(&texts).map_err(|e| OrdersError::Rules(e.to_string()))?;
        let mut states = HashMap::new();
        for (rule, order) in rules.iter().zip(&body.orders) {
            let bad = |problem: String| OrdersError::Rule {
                rule: order.rule.clone(),
                problem,
            };
            if *rule.name != order.rule {
                return Err(bad(format!("its text names rule {:?}", rule.name)));
            }
            if rule.actions.len() != order.states_json.len() {
                return Err(bad(format!(
                    "{} action(s) but {} state set(s)",
                    rule.actions.len(),
                    order.states_json.len()
                )));
            }
            // Defence in depth: the master sends only applies to the event's
            // own minion; anything else is not the minion's to do alone.
            for a in &rule.actions {
                if !matches!(a, Action::Apply { target: None, .. }) {
                    return Err(bad(format!(
                        "an action `{}` other than an apply to this minion",
                        a.kind()
                    )));
                }
            }
            for json in &order.states_json {
                serde_json::from_slice::<Vec<tend_state::State>>(json)
                    .map_err(|e| bad(format!("its states do not read: {e}")))?;
            }
            states.insert(order.rule.clone(), order.states_json.clone());
        }
        Ok(Self {
            body,
            sealed,
            received_us,
            rules: Arc::new(rules),
            states,
        })
    }

    pub fn version(&self) -> u64 {
        self.body.version
    }

    /// Past their expiry: not to be enforced.
    pub fn expired(&self, now_us: i64) -> bool {
        now_us >= self.body.expires_us
    }

    /// Whether there is anything to enforce (enabled, with rules).
    pub fn enforceable(&self) -> bool {
        self.body.enabled && !self.body.orders.is_empty()
    }

    /// The orders file in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(FILE)
    }

    /// Reads the orders kept in `dir` and checks them again; None when
    /// there are none.
    pub fn load(dir: &Path, minion: &str, pins: &[MasterPin]) -> Result<Option<Self>, OrdersError> {
        let path = Self::path(dir);
        let file_error = |error: String| OrdersError::File {
            path: path.clone(),
            error,
        };
        let bytes = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(file_error(e.to_string())),
            Ok(m) if m.len() > MAX_FILE => {
                return Err(file_error(format!(
                    "{} bytes, more than orders ever take ({MAX_FILE})",
                    m.len()
                )));
            }
            Ok(_) => std::fs::read(&path).map_err(|e| file_error(e.to_string()))?,
        };
        if bytes.len() < 8 {
            return Err(file_error("too short to hold orders".into()));
        }
        let received_us = i64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        let sealed = StandingOrders::decode(&bytes[8..])
            .map_err(|e| file_error(format!("does not decode: {e}")))?;
        Self::check(sealed, minion, pins, received_us).map(Some)
    }

    /// Keeps the orders in `dir`, whole or not at all, readable by the
    /// minion's user only.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = Self::path(dir);
        let tmp = dir.join(format!("{FILE}.tmp"));
        let mut bytes = self.received_us.to_le_bytes().to_vec();
        bytes.extend_from_slice(&self.sealed.encode_to_vec());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    }

    /// Forgets the orders kept in `dir`.
    pub fn remove(dir: &Path) -> std::io::Result<()> {
        match std::fs::remove_file(Self::path(dir)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => std::fs::File::open(dir)?.sync_all(),
        }
    }
}
