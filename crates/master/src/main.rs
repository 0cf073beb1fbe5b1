//! tend-master: receives and stores events, runs the reactor, sends states
//! to minions, and answers the CLI.

mod actions;
mod control;
mod emit;
mod fleet;
mod ingest;
mod jobs;
mod master;
mod metrics;
mod minions;
mod orders;
mod prune;
mod react;
mod reactor_inbox;
mod recovery;
mod rules;
mod stats;
mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tend_bus::{BusStats, ControlServer, Identity, KeyStore, MasterBus, MasterBusConfig};
use tend_master::config::MasterConfig;
use tend_reactor::{Rule, RuleErrors, Rules};
use tend_state::StateTree;
use tend_store::{PgOptions, PgStore, Store};
use tokio::sync::mpsc;

use crate::master::{Master, Parts};
use crate::store::Backend;

#[derive(Parser)]
#[command(
    version,
    about = "tend master: stores events, reacts to them, keeps minions in their desired state"
)]
struct Args {
    /// Path to master.toml.
    #[arg(long, short, default_value = "/etc/tend/master.toml")]
    config: PathBuf,
    /// Validate the config and the rules, then exit.
    #[arg(long)]
    check_config: bool,
    /// Print the master's key fingerprint (creating the key if needed), for
    /// minions' `master_fingerprint`, then exit.
    #[arg(long)]
    fingerprint: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// The master's store.
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(clap::Subcommand)]
enum StoreCommand {
    /// Copies the embedded store (events, jobs, minions, the reactor's
    /// cursor and windows) and the key decisions (accepted, pre-approved
    /// and rejected keys, labels) into an empty PostgreSQL database, ids
    /// kept.
    /// Run it with the master stopped, then set `[store] postgres`.
    #[command(
        after_help = "Example:\n  systemctl stop tend-master\n  TEND_STORE_PASSWORD=... tend-master store migrate --to postgres://tend@db/tend\n  # then in master.toml: [store] postgres = \"postgres://tend@db/tend\""
    )]
    Migrate {
        /// The database: a postgres:// URL or a key=value string. The
        /// password comes from the URL or TEND_STORE_PASSWORD.
        #[arg(long)]
        to: String,
    },
}

/// `tend-master store migrate --to URL`.
fn migrate(cfg: &MasterConfig, config: &Path, to: &str) -> anyhow::Result<()> {
    let from = Store::open(&cfg.data_dir)?;
    let fingerprint =
        Identity::load_or_create(&cfg.data_dir.join("keys/master.key"))?.fingerprint();
    let password = std::env::var(tend_master::config::STORE_PASSWORD_ENV)
        .ok()
        .filter(|p| !p.is_empty());
    let to_store = PgStore::open(&PgOptions {
        url: to.to_string(),
        password,
        owner: fingerprint,
        ca_file: cfg.store.ca_file.clone(),
    })?;
    // Read only for its list (arrivals, which auto_accept and the
    // pre-seeds decide, never come here).
    let keys = KeyStore::open(&cfg.data_dir.join("keys"), false, Vec::new())?;
    let decisions = key_decisions(&keys);
    let copied = to_store.copy_from(&from, &decisions, |what, n| {
        eprintln!("tend-master: {what}: {n} copied")
    })?;
    println!(
        "copied {} events, {} jobs, {} minions, {} reactor groups and {} key decisions from {} into {}",
        copied.events,
        copied.jobs,
        copied.minions,
        copied.reactor_groups,
        copied.keys,
        from.path().display(),
        to_store.shown()
    );
    println!(
        "next: set [store] postgres = {:?} in {} and start the master",
        tend_store::redact(to),
        config.display()
    );
    Ok(())
}

/// The operator's decisions the key store holds, as the key changes
/// masters sharing a store tell each other: each accepted key and
/// pre-approval as an accept of its fingerprint (a master that has not
/// heard the key pre-approves it), each accepted minion's labels bound to
/// its key, each rejected name as a rejection. Pending and denied keys are
/// what peers said, not decisions: each master hears them itself.
fn key_decisions(keys: &KeyStore) -> Vec<tend_store::KeyChange> {
    use tend_bus::KeyState;
    let mut out = Vec::new();
    for k in keys.list() {
        let kind = tend_bus::kind_name(k.kind).to_string();
        let change = |action: &str, fingerprint: &str, labels: Vec<String>| tend_store::KeyChange {
            kind: kind.clone(),
            action: action.into(),
            name: k.name.clone(),
            fingerprint: fingerprint.into(),
            labels,
        };
        match k.state {
            KeyState::Accepted | KeyState::Preapproved => {
                out.push(change("accept", &k.fingerprint, Vec::new()));
                if !k.labels.is_empty() {
                    let labels = k.labels.iter().map(|(l, v)| format!("{l}={v}")).collect();
                    out.push(change("label", &k.fingerprint, labels));
                }
            }
            KeyState::Rejected => out.push(change("reject", "", Vec::new())),
            KeyState::Pending | KeyState::Denied => {}
        }
    }
    out
}

fn main() -> std::process::ExitCode {
    // Before any thread: the store, keys and control socket are private
    // whatever umask the master was started with.
    tend_daemon::private_umask();
    let args = Args::parse();
    let cfg = match MasterConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tend-master: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Err(e) = tend_daemon::init_logging(&cfg.log) {
        eprintln!(
            "tend-master: config file {}: [log]: {e}",
            args.config.display()
        );
        return std::process::ExitCode::from(2);
    }
    if let Some(Command::Store(StoreCommand::Migrate { to })) = &args.command {
        return match migrate(&cfg, &args.config, to) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tend-master: store migrate: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tend-master: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let one_shot = args.check_config || args.fingerprint;
    match runtime.block_on(run(args, cfg)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Said once: a check or --fingerprint answers on stderr; a
            // daemon logs why it stopped (its log is stderr too, shaped
            // for a terminal, a file or the journal).
            if one_shot {
                eprintln!("tend-master: {e:#}");
            } else {
                tracing::error!("{e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// `--check-config`: the config, the rules, and the whole state tree (the
/// top file, every state file, the states each rule applies, sources and
/// templates). Every problem is printed, not only the first: every bad rule
/// of every rule file, then every problem of the state tree.
fn check_config(
    args: &Args,
    cfg: &MasterConfig,
    loaded: Result<Rules, RuleErrors>,
) -> anyhow::Result<()> {
    // The rules that compiled are checked on (the states they apply),
    // even when others did not.
    let (rules, rule_problems): (Vec<&Rule>, Vec<String>) = match &loaded {
        Ok(rules) => (rules.iter().collect(), Vec::new()),
        Err(e) => (
            e.compiled().iter().collect(),
            e.problems().iter().map(|p| p.to_string()).collect(),
        ),
    };
    for p in &rule_problems {
        eprintln!("tend-master: {p}");
    }
    // Who applies which states, so that a state not found names its rule.
    let applied: Vec<(String, Vec<String>)> = rules
        .iter()
        .flat_map(|r| r.actions.iter().map(move |a| (r, a)))
        .filter_map(|(r, a)| match a {
            tend_reactor::Action::Apply { states, .. } => {
                Some((format!("{}: rule {:?}", r.file, r.name), states.clone()))
            }
            _ => None,
        })
        .collect();
    let tree = StateTree::new(&cfg.state_root);
    for warning in tree.secret_warnings(&rule_targets(rules.iter().copied())) {
        eprintln!("tend-master: {warning}");
    }
    let state_problems = match tree.check_all(&applied) {
        Ok(files) if rule_problems.is_empty() => {
            println!(
                "{}: ok ({} rule(s) in {}, {} state file(s) in {})",
                args.config.display(),
                rules.len(),
                cfg.reactor_dir.display(),
                files,
                cfg.state_root.display()
            );
            return Ok(());
        }
        Ok(_) => Vec::new(),
        Err(problems) => problems,
    };
    for p in &state_problems {
        eprintln!("tend-master: {p}");
    }
    let mut counts = Vec::new();
    if !rule_problems.is_empty() {
        counts.push(format!(
            "{} problem(s) in the rules in {}",
            rule_problems.len(),
            cfg.reactor_dir.display()
        ));
    }
    if !state_problems.is_empty() {
        counts.push(format!(
            "{} problem(s) in the state tree {}",
            state_problems.len(),
            cfg.state_root.display()
        ));
    }
    anyhow::bail!("{}", counts.join(", "))
}

/// Ends the jobs a previous run of the master left running or queued (it
/// crashed, or was stopped mid-job): they are marked `interrupted`, and
/// said so in events, stored before anything else happens. On a store
/// shared by masters its rule applies to one minion are kept to be
/// finished (sent again under their ids once the minion is back): the
/// count interrupted, and those.
fn interrupt_unfinished(store: &dyn Backend) -> anyhow::Result<(u64, Vec<tend_proto::v1::Job>)> {
    let (jobs, resume) = store
        .restart_jobs(
            "the master stopped (a crash or a restart) while this job ran: its outcome on the minion is unknown",
        )
        .context("cannot end the jobs the last run of the master left running")?;
    if !resume.is_empty() {
        let ids: Vec<u64> = resume.iter().map(|j| j.id).collect();
        tracing::warn!(jobs = ?ids, "rule applies left running (by the last run of the master, or by masters gone silent) are finished once their minions are back");
    }
    if jobs.is_empty() {
        return Ok((0, resume));
    }
    let ids: Vec<u64> = jobs.iter().map(|j| j.id).collect();
    tracing::warn!(jobs = ?ids, "jobs left running by the last run of the master are marked interrupted");
    let mut events: Vec<tend_proto::v1::Event> = jobs.iter().flat_map(jobs::announce).collect();
    events.push(tend_proto::v1::Event {
        tag: "master/jobs/interrupted".into(),
        time_us: tend_proto::now_us(),
        data: serde_json::json!({"jobs": ids, "count": ids.len()})
            .to_string()
            .into_bytes(),
        ..Default::default()
    });
    store
        .append(
            Vec::new(),
            events
                .into_iter()
                .map(|event| tend_store::Local {
                    n: 0,
                    event,
                    presence: None,
                })
                .collect(),
        )
        .context("cannot store the events of the interrupted jobs")?;
    Ok((ids.len() as u64, resume))
}

/// (where, target, states) of every rule action that applies states to a
/// target rather than to the event's own minion.
fn rule_targets<'a>(rules: impl Iterator<Item = &'a Rule>) -> Vec<(String, String, Vec<String>)> {
    rules
        .flat_map(|r| r.actions.iter().map(move |a| (r, a)))
        .filter_map(|(r, a)| match a {
            tend_reactor::Action::Apply {
                target: Some(target),
                states,
                ..
            } => Some((format!("rule {:?}", r.name), target.clone(), states.clone())),
            _ => None,
        })
        .collect()
}

/// The store as the master starts with it.
struct Opened {
    store: Arc<dyn Backend>,
    /// Jobs the last run left unfinished, now interrupted.
    interrupted: u64,
    /// Rule applies the last run left unfinished, to finish.
    resume: Vec<tend_proto::v1::Job>,
    last_event: u64,
    local_mark: u64,
    /// The minions the store remembers, none connected yet.
    minions: HashMap<String, tend_proto::v1::MinionInfo>,
}

/// Opens the store's backend (the one place that picks it) and reads what
/// the master starts from. Blocks: on a blocking thread.
fn open_store(data_dir: &Path, pg: Option<PgOptions>) -> anyhow::Result<Opened> {
    let store: Arc<dyn Backend> = match pg {
        None => Arc::new(Store::open(data_dir)?),
        Some(opts) => Arc::new(PgStore::open(&opts)?),
    };
    let (interrupted, resume) = interrupt_unfinished(store.as_ref())?;
    let minions = store
        .minions()?
        .into_iter()
        .map(|mut m| {
            m.connected = false;
            (m.id.clone(), m)
        })
        .collect();
    Ok(Opened {
        interrupted,
        resume,
        last_event: store.last_event_id()?,
        local_mark: store.local_mark()?,
        minions,
        store,
    })
}

async fn run(args: Args, cfg: MasterConfig) -> anyhow::Result<()> {
    let loaded = Rules::load_dir(&cfg.reactor_dir);
    if args.check_config {
        return check_config(&args, &cfg, loaded);
    }
    let rules = Arc::new(loaded?);
    tend_daemon::private_dir(&cfg.data_dir).map_err(anyhow::Error::msg)?;
    let identity = Arc::new(Identity::load_or_create(
        &cfg.data_dir.join("keys/master.key"),
    )?);
    if args.fingerprint {
        println!("{}", identity.fingerprint());
        return Ok(());
    }
    let keys = Arc::new(KeyStore::open(
        &cfg.data_dir.join("keys"),
        cfg.auto_accept,
        cfg.preseeds.clone(),
    )?);
    {
        // The same warnings as --check-config, in the log of every start.
        let (tree, targets) = (StateTree::new(&cfg.state_root), rule_targets(rules.iter()));
        for warning in tokio::task::spawn_blocking(move || tree.secret_warnings(&targets)).await? {
            tracing::warn!("{warning}");
        }
    }
    let Opened {
        store,
        interrupted,
        resume,
        last_event,
        local_mark,
        minions,
    } = {
        // Masters sharing a database tell their own events apart by their
        // key's fingerprint.
        let pg = cfg
            .store_options(&identity.fingerprint())
            .map_err(anyhow::Error::msg)?;
        let data_dir = cfg.data_dir.clone();
        tokio::task::spawn_blocking(move || open_store(&data_dir, pg)).await??
    };
    let shutdown = tend_daemon::shutdown_on_signals()?;

    let bus_stats = Arc::new(BusStats::default());
    let (control_tx, requests) = mpsc::channel(256);
    let (bus, inbound) = MasterBus::bind(
        MasterBusConfig {
            event_endpoint: cfg.event_endpoint.clone(),
            command_endpoint: cfg.command_endpoint.clone(),
            max_message_size: cfg.max_message_size,
            heartbeat: Duration::from_millis(cfg.heartbeat_ms),
            presence_timeout: Duration::from_millis(cfg.presence_timeout_ms),
        },
        identity.clone(),
        keys.clone(),
        bus_stats.clone(),
        control_tx.clone(),
    )?;
    let control_endpoint = cfg.control_endpoint();
    // The socket is bound inside a directory only the master can enter, so
    // there is no moment at which anyone else can connect to it.
    if control_endpoint.starts_with(&format!("ipc://{}/", cfg.run_dir.display())) {
        tend_daemon::private_dir(&cfg.run_dir).map_err(anyhow::Error::msg)?;
    }
    let control_socket = tend_daemon::prepare_ipc(&control_endpoint).map_err(anyhow::Error::msg)?;
    let _control = ControlServer::bind(
        &control_endpoint,
        cfg.max_message_size,
        bus_stats.clone(),
        control_tx,
    )?;
    if let Some(path) = &control_socket {
        tend_daemon::restrict_socket(path).map_err(anyhow::Error::msg)?;
    }

    let metrics_listener = match &cfg.metrics_listen {
        Some(listen) => Some(
            tend_daemon::metrics::bind(listen)
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?,
        ),
        None => None,
    };

    tracing::info!(
        events = %cfg.event_endpoint,
        commands = %cfg.command_endpoint,
        control = %control_endpoint,
        store = %store.describe(),
        rules = rules.len(),
        minions = minions.len(),
        fingerprint = %identity.fingerprint(),
        "tend-master ready"
    );
    let (master, queues) = Master::build(Parts {
        cfg,
        store,
        last_event,
        local_mark,
        bus,
        bus_stats,
        keys,
        fingerprint: identity.fingerprint(),
        identity: identity.clone(),
        rules: rules.clone(),
        minions,
        resume,
    });
    stats::add(&master.stats.counters.jobs_interrupted, interrupted);
    if let Some(listener) = metrics_listener {
        tokio::spawn(tend_daemon::metrics::serve(
            listener,
            metrics::render(Arc::downgrade(&master.metrics)),
            shutdown.clone(),
        ));
    }
    {
        let (runner, rt) = (
            Arc::downgrade(&master.reactor),
            tokio::runtime::Handle::current(),
        );
        let inbox = queues.reactor;
        std::thread::Builder::new()
            .name("reactor".into())
            .spawn(move || react::run(runner, inbox, rt, rules))?;
    }
    {
        // SIGHUP: read the rules again, as daemons do.
        let rules = master.rules.clone();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the rules");
                let _ = rules.reload().await;
            }
        });
    }

    tend_daemon::systemd::ready(&format!(
        "serving {} minion(s), {} rule(s)",
        master.minions.count(),
        master.rules.current().len()
    ));
    tend_daemon::systemd::spawn_watchdog();
    let ingest = tokio::spawn(
        master
            .ingest
            .clone()
            .run(inbound, queues.local, shutdown.clone()),
    );
    let control = tokio::spawn(master.control.clone().serve(requests, shutdown.clone()));
    tokio::spawn(master.retention.clone().run(shutdown.clone()));
    tokio::spawn(master.orders.clone().run(queues.orders, shutdown.clone()));
    shutdown.cancelled().await;
    tend_daemon::systemd::stopping();
    let _ = tokio::time::timeout(Duration::from_secs(5), ingest).await;
    let _ = control.await;
    if let Some(path) = control_socket {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("tend-master stopped");
    Ok(())
}
