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

/// Orders whose signature, minion and shape were checked; compiled into
/// rules on first need (when the minion enforces them), so a minion that
/// only holds them, standing by, does not carry the rule engine's code and
/// data in its memory (its budget is 10 MB).
pub struct Orders {
    pub body: OrdersBody,
    /// As they arrived (kept on disk as such, and checked again on read).
    pub sealed: StandingOrders,
    /// When this minion first took this version, microseconds.
    pub received_us: i64,
    compiled: std::sync::OnceLock<Result<Arc<Compiled>, String>>,
}

/// Orders compiled: the rules, and each rule's actions' states.
pub struct Compiled {
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

/// Compiles the orders' rules with the master's own code and checks that
/// each only applies states to this minion.
fn compile(body: &OrdersBody) -> Result<Compiled, OrdersError> {
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
    Ok(Compiled {
        rules: Arc::new(rules),
        states,
    })
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
        if body
            .orders
            .iter()
            .any(|o| o.rule.is_empty() || o.toml.is_empty())
        {
            return Err(OrdersError::Rules("a rule with no name or no text".into()));
        }
        Ok(Self {
            body,
            sealed,
            received_us,
            compiled: std::sync::OnceLock::new(),
        })
    }

    /// The orders compiled (once): every rule compiling, and only applying
    /// states to this minion.
    pub fn compiled(&self) -> Result<Arc<Compiled>, OrdersError> {
        self.compiled
            .get_or_init(|| compile(&self.body).map(Arc::new).map_err(|e| e.to_string()))
            .clone()
            .map_err(OrdersError::Rules)
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

#[cfg(test)]
mod tests {
    use super::*;
    use tend_bus::Identity;
    use tend_proto::v1::{Event, StandingOrder};
    use tokio::time::{Duration, Instant, advance};

    const RULES: &str = r#"
[[rule]]
name = "three-in-ten"
on = "minion/*/beacon/motd/*"
count = 3
window = "10s"
[[rule.action]]
apply = ["motd"]

[[rule]]
name = "once-a-minute"
on = "minion/*/beacon/motd/*"
once_within = "60s"
[[rule.action]]
apply = ["motd"]
"#;

    /// A state set as a master sends it (a JSON array of states).
    fn states() -> Vec<u8> {
        let set = tend_state::parse_state_file(
            "motd.toml",
            "motd",
            "[motd]\ntype = \"file.absent\"\npath = \"/nonexistent/tend-test\"\n",
        )
        .unwrap();
        serde_json::to_vec(&set).unwrap()
    }

    fn sealed(identity: &Identity, body: &OrdersBody) -> StandingOrders {
        let bytes = body.encode_to_vec();
        StandingOrders {
            signature: identity.sign_orders(&bytes),
            body: bytes,
            master_key: identity.public_key().to_vec(),
        }
    }

    /// The orders a master would compile from `RULES` for web1.
    fn body(rules: &Rules) -> OrdersBody {
        OrdersBody {
            minion: "web1".into(),
            version: 7,
            issued_us: 1,
            expires_us: i64::MAX,
            enabled: true,
            orders: rules
                .iter()
                .map(|r| StandingOrder {
                    rule: r.name.to_string(),
                    toml: r.to_toml(),
                    states_json: vec![states()],
                })
                .collect(),
            held: Vec::new(),
        }
    }

    fn pin(identity: &Identity) -> Vec<MasterPin> {
        vec![MasterPin::Fingerprint(identity.fingerprint())]
    }

    fn edit(seq: u64) -> Event {
        Event {
            minion: "web1".into(),
            seq,
            tag: "minion/web1/beacon/motd/modified".into(),
            data: b"{}".to_vec(),
            ..Default::default()
        }
    }

    /// Check 4: a `count within window` rule and a `once_within`
    /// throttle, compiled from the orders on the minion, fire at the same
    /// events as the master's own rules, on the same (paused) clock.
    #[tokio::test(start_paused = true)]
    async fn windows_and_throttles_behave_the_same_from_the_orders_as_on_the_master() {
        let master_rules = Arc::new(Rules::from_texts(&[("r.toml".into(), RULES.into())]).unwrap());
        let identity = Identity::ephemeral().unwrap();
        let orders = Orders::check(
            sealed(&identity, &body(&master_rules)),
            "web1",
            &pin(&identity),
            0,
        )
        .unwrap();
        let mut on_master = tend_reactor::Reactor::new(master_rules);
        let mut on_minion = tend_reactor::Reactor::new(orders.compiled().unwrap().rules.clone());
        // Seconds between edits: three close ones, a lull past the window,
        // a burst, and one past the throttle.
        let gaps = [0, 1, 1, 1, 12, 1, 1, 1, 1, 50, 1, 1];
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (i, gap) in gaps.iter().enumerate() {
            advance(Duration::from_secs(*gap)).await;
            let e = edit(i as u64 + 1);
            let now = Instant::now();
            for f in on_master.on_event(&e, now) {
                a.push((f.rule.to_string(), f.event.seq));
            }
            for f in on_minion.on_event(&e, now) {
                b.push((f.rule.to_string(), f.event.seq));
            }
        }
        assert_eq!(a, b, "the same fires from the same rules");
        let count_fires: Vec<u64> = a
            .iter()
            .filter(|(r, _)| r == "three-in-ten")
            .map(|(_, s)| *s)
            .collect();
        let throttle_fires: Vec<u64> = a
            .iter()
            .filter(|(r, _)| r == "once-a-minute")
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(count_fires.first(), Some(&3), "{a:?}");
        assert_eq!(throttle_fires.first(), Some(&1), "{a:?}");
        assert!(
            throttle_fires.len() >= 2,
            "the throttle lets one through a minute: {a:?}"
        );
    }

    #[test]
    fn orders_not_signed_by_a_pinned_master_are_refused() {
        let master = Identity::ephemeral().unwrap();
        let other = Identity::ephemeral().unwrap();
        let rules = Rules::from_texts(&[("r.toml".into(), RULES.into())]).unwrap();
        let good = sealed(&master, &body(&rules));
        // Signed by a key this minion never pinned.
        let by_other = sealed(&other, &body(&rules));
        assert!(matches!(
            Orders::check(by_other, "web1", &pin(&master), 0),
            Err(OrdersError::NotPinned(_))
        ));
        // The pinned key, a signature over other bytes.
        let mut forged = good.clone();
        let mut b = body(&rules);
        b.expires_us = i64::MAX - 1;
        forged.body = b.encode_to_vec();
        assert!(matches!(
            Orders::check(forged, "web1", &pin(&master), 0),
            Err(OrdersError::BadSignature)
        ));
        // Another minion's orders.
        assert!(matches!(
            Orders::check(good.clone(), "web2", &pin(&master), 0),
            Err(OrdersError::OtherMinion(_))
        ));
        assert!(Orders::check(good, "web1", &pin(&master), 0).is_ok());
    }

    #[test]
    fn orders_with_anything_but_applies_to_the_minion_itself_are_refused() {
        let master = Identity::ephemeral().unwrap();
        for (what, action) in [
            ("a run", "run = [\"sh\", \"-c\", \"id\"]"),
            ("an apply to others", "apply = [\"motd\"]\ntarget = \"*\""),
        ] {
            let text = format!(
                "[[rule]]\nname = \"r\"\non = \"minion/*/beacon/**\"\n[[rule.action]]\n{action}\n"
            );
            let rules = Rules::from_texts(&[("r.toml".into(), text)]).unwrap();
            let b = body(&rules);
            assert!(
                matches!(
                    Orders::check(sealed(&master, &b), "web1", &pin(&master), 0)
                        .and_then(|o| o.compiled().map(|_| ())),
                    Err(OrdersError::Rules(_))
                ),
                "{what} was taken"
            );
        }
    }

    #[test]
    fn orders_round_trip_through_the_disk_and_a_tampered_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let master = Identity::ephemeral().unwrap();
        let rules = Rules::from_texts(&[("r.toml".into(), RULES.into())]).unwrap();
        let orders =
            Orders::check(sealed(&master, &body(&rules)), "web1", &pin(&master), 42).unwrap();
        orders.save(dir.path()).unwrap();
        let back = Orders::load(dir.path(), "web1", &pin(&master))
            .unwrap()
            .unwrap();
        assert_eq!(back.version(), 7);
        assert_eq!(back.received_us, 42);
        let path = Orders::path(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 40] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(Orders::load(dir.path(), "web1", &pin(&master)).is_err());
        Orders::remove(dir.path()).unwrap();
        assert!(
            Orders::load(dir.path(), "web1", &pin(&master))
                .unwrap()
                .is_none()
        );
    }
}
