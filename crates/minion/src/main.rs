//! tend-minion: runs the beacons, keeps events in a durable outbox until
//! the master has them, and applies states when the master says so.

mod autonomy;
mod beacons;
mod commands;
mod job_memory;
mod local;
mod metrics;
mod publisher;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tend_bus::{BusStats, ControlServer, Identity, MinionBus, MinionBusConfig, MinionInbound};
use tend_state::Ledger;
use tokio::sync::mpsc;

use crate::commands::Commands;
use crate::publisher::{Publisher, Signal};
use tend_minion::config::MinionConfig;
use tend_minion::{facts, outbox};

#[derive(Parser)]
#[command(
    version,
    about = "tend minion: watches this server and keeps it in its desired state"
)]
struct Args {
    /// Path to minion.toml.
    #[arg(long, short, global = true, default_value = "/etc/tend/minion.toml")]
    config: PathBuf,
    /// Validate the config (and every beacon in it), then exit.
    #[arg(long)]
    check_config: bool,
    /// Print this minion's key fingerprint (creating the key if needed),
    /// for the master's `accept_fingerprints`, then exit.
    #[arg(long)]
    fingerprint: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Fire an event into tend from this server, through the running
    /// minion. Its tag is `minion/<id>/event/<TAG>`.
    #[command(after_help = "Example:\n  tend-minion send deploy/done '{\"version\": \"1.4.2\"}'")]
    Send {
        tag: String,
        /// A JSON object.
        #[arg(default_value = "{}")]
        data: String,
        /// Send this many, each with `"n": <i>` added (for load tests).
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
}

fn main() -> std::process::ExitCode {
    // Before any thread: the outbox, keys, backups and local socket are
    // private whatever umask the minion was started with; the commands it
    // runs get back the umask it was started with (UMask= in its unit).
    tend_state::set_command_umask(tend_daemon::private_umask());
    let args = Args::parse();
    let cfg = match MinionConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tend-minion: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(Cmd::Send { tag, data, count }) = &args.command {
        return match send(&cfg, tag, data, *count) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tend-minion send: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if let Err(e) = tend_daemon::init_logging(&cfg.log) {
        eprintln!(
            "tend-minion: config file {}: [log]: {e}",
            args.config.display()
        );
        return std::process::ExitCode::from(2);
    }
    // Two workers, and a small blocking pool (beacons' looks, hashing,
    // state runs) whose idle threads go after a few seconds: a minion
    // should stay small.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .thread_keep_alive(Duration::from_secs(5))
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tend-minion: cannot start the runtime: {e}");
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
                eprintln!("tend-minion: {e:#}");
            } else {
                tracing::error!("{e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, mut cfg: MinionConfig) -> anyhow::Result<()> {
    let id = cfg.minion_id()?;
    let config_file = args.config.display().to_string();
    let beacons = tend_beacons::build_all(&config_file, std::mem::take(&mut cfg.beacon))?;
    if args.check_config {
        println!(
            "{config_file}: ok (minion {id}, {} beacon(s) enabled)",
            beacons.len()
        );
        return Ok(());
    }

    tend_daemon::private_dir(&cfg.data_dir).map_err(anyhow::Error::msg)?;
    let identity = Arc::new(
        Identity::load_or_create(&cfg.data_dir.join("minion.key"))
            .context("the minion's identity key")?,
    );
    if args.fingerprint {
        println!("{}", identity.fingerprint());
        return Ok(());
    }
    let outbox_dir = cfg.data_dir.join("outbox");
    let outbox = outbox::Outbox::open(&outbox_dir, cfg.outbox.max_bytes, cfg.outbox.fsync)
        .with_context(|| format!("cannot open the outbox in {}", outbox_dir.display()))?;
    let shutdown = tend_daemon::shutdown_on_signals()?;

    let stats = Arc::new(BusStats::default());
    let local_endpoint = local_endpoint(&cfg);
    let local_socket = tend_daemon::prepare_ipc(&local_endpoint).map_err(anyhow::Error::msg)?;
    let (local_tx, local_requests) = mpsc::channel(64);
    let _local = ControlServer::bind(
        &local_endpoint,
        cfg.max_message_size,
        stats.clone(),
        local_tx,
    )?;
    if let Some(path) = &local_socket {
        tend_daemon::restrict_socket(path).map_err(anyhow::Error::msg)?;
    }
    // A session with each master; what they say comes in on one queue,
    // marked with the master's place in the list.
    let facts = facts::gather(&cfg.labels);
    let (inbound_tx, mut inbound) = mpsc::channel::<(usize, MinionInbound)>(1024);
    let mut buses = Vec::new();
    for (i, master) in cfg.masters().iter().enumerate() {
        let (bus, mut from_bus) = MinionBus::connect(
            MinionBusConfig {
                minion: id.clone(),
                event_endpoint: master.event_endpoint.clone(),
                command_endpoint: master.command_endpoint.clone(),
                max_message_size: cfg.max_message_size,
                master_timeout: Duration::from_millis(cfg.master_timeout_ms),
                version: env!("CARGO_PKG_VERSION").into(),
                facts: facts.clone(),
                identity: identity.clone(),
                master: master.pin.clone(),
            },
            stats.clone(),
        )
        .with_context(|| format!("master {}", master.name))?;
        buses.push(Arc::new(bus));
        let to_main = inbound_tx.clone();
        tokio::spawn(async move {
            while let Some(msg) = from_bus.recv().await {
                if to_main.send((i, msg)).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(inbound_tx);
    let masters: Vec<&str> = cfg.masters().iter().map(|m| m.name.as_str()).collect();
    tracing::info!(
        minion = %id,
        masters = ?masters,
        events = %cfg.masters().iter().map(|m| m.event_endpoint.as_str()).collect::<Vec<_>>().join(" "),
        commands = %cfg.masters().iter().map(|m| m.command_endpoint.as_str()).collect::<Vec<_>>().join(" "),
        beacons = beacons.len(),
        fingerprint = %identity.fingerprint(),
        unacked = outbox.unacked(),
        outbox_bytes = outbox.bytes(),
        "tend-minion started"
    );

    let metrics = Arc::new(metrics::MinionMetrics::default());
    let beacons_running = Arc::new(std::sync::atomic::AtomicU64::new(beacons.len() as u64));
    if let Some(listen) = &cfg.metrics_listen {
        let listener = tend_daemon::metrics::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("{config_file}: {e}"))?;
        tokio::spawn(tend_daemon::metrics::serve(
            listener,
            metrics::render(metrics.clone(), stats.clone(), beacons_running.clone()),
            shutdown.clone(),
        ));
    }
    let ledger = Arc::new(Ledger::default());
    let (event_tx, event_rx) = mpsc::channel(4096);
    let mut running = beacons::Beacons::start(beacons, &event_tx, &shutdown, &ledger);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;

    let (signal_tx, signal_rx) = mpsc::channel(1024);
    let autonomy = autonomy::Autonomy::new(
        id.clone(),
        cfg.data_dir.clone(),
        cfg.masters().iter().map(|m| m.pin.clone()).collect(),
        cfg.autonomy_after_ms,
    );
    let (marked_tx, marked_rx) = mpsc::unbounded_channel();
    let publisher = Publisher::new(
        id.clone(),
        outbox,
        buses.clone(),
        metrics.clone(),
        autonomy.clone(),
        marked_tx,
    );
    let outbox_for_enforcer = publisher.outbox();
    let publisher_stop = tokio_util::sync::CancellationToken::new();
    let publisher_task = tokio::spawn(publisher.run(event_rx, signal_rx, publisher_stop.clone()));

    tokio::spawn(local::serve(
        id.clone(),
        local_requests,
        signal_tx.clone(),
        stats.clone(),
    ));

    let commands = Arc::new(Commands {
        // Always: a master on PostgreSQL that restarts (or another master)
        // finishes a rule's apply by sending it again under its id.
        jobs: Some(job_memory::JobMemory::new()),
        buses: buses.clone(),
        backup_dir: cfg.data_dir.join("backups"),
        ledger: ledger.clone(),
        publisher: signal_tx.clone(),
        state_run: tokio::sync::Mutex::new(()),
        metrics: metrics.clone(),
        autonomy: autonomy.clone(),
    });
    let enforcer_stop = tokio_util::sync::CancellationToken::new();
    let enforcer = tokio::spawn(
        autonomy::Enforcer {
            autonomy: autonomy.clone(),
            commands: commands.clone(),
            publisher: signal_tx.clone(),
            minion: id.clone(),
            outbox: outbox_for_enforcer,
            data_dir: cfg.data_dir.clone(),
            last_marked: Default::default(),
            done_before: Default::default(),
        }
        .run(marked_rx, enforcer_stop.clone()),
    );
    tend_daemon::systemd::ready(&format!(
        "minion {id}, {} beacon(s)",
        beacons_running.load(std::sync::atomic::Ordering::Relaxed)
    ));
    tend_daemon::systemd::spawn_watchdog();

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = hangup.recv() => {
                // SIGHUP: read the beacons again. A bad config is refused
                // and the running beacons keep going.
                match reload_beacons(&args.config) {
                    Ok(specs) => {
                        running.stop().await;
                        tracing::info!(beacons = specs.len(), "SIGHUP: beacons reloaded");
                        beacons_running.store(specs.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        running = beacons::Beacons::start(specs, &event_tx, &shutdown, &ledger);
                    }
                    Err(e) => tracing::error!("SIGHUP: the beacons were not reloaded, the running ones stay: {e:#}"),
                }
            }
            msg = inbound.recv() => match msg {
                None => break,
                Some((master, MinionInbound::Request(req))) => commands.handle(master, req).await,
                Some((master, MinionInbound::Connected { .. })) => {
                    let _ = signal_tx.send(Signal::Connected { master }).await;
                }
                Some((master, MinionInbound::Disconnected { .. })) => {
                    let _ = signal_tx.send(Signal::Disconnected { master }).await;
                }
                Some((master, MinionInbound::Subscribed)) => {
                    let _ = signal_tx.send(Signal::Subscribed { master }).await;
                }
                Some((master, MinionInbound::Refused { status })) => {
                    // The master's own word (sealed): a key it rejected or
                    // no longer knows holds no orders of its (orders
                    // another master signed are that master's to drop).
                    if matches!(status.as_str(), "rejected" | "pending" | "denied") && autonomy.drop_orders(master, &status) {
                        let event = tend_proto::v1::Event {
                            minion: id.clone(),
                            seq: 0,
                            tag: format!("minion/{id}/autonomy/dropped"),
                            time_us: tend_proto::now_us(),
                            data: serde_json::json!({"reason": format!("the master refused this minion's key ({status})")}).to_string().into_bytes(),
                            cause: 0,
                            local_orders: 0,
                        };
                        let (done, _) = tokio::sync::oneshot::channel();
                        let _ = signal_tx.send(Signal::Send { events: vec![event], done }).await;
                    }
                }
                Some((_, MinionInbound::Alarm(message))) => {
                    // Kept in the outbox: the real master hears of it.
                    let event = tend_proto::v1::Event {
                        minion: id.clone(),
                        seq: 0,
                        tag: format!("minion/{id}/security/alarm"),
                        time_us: tend_proto::now_us(),
                        data: serde_json::json!({"alarm": message}).to_string().into_bytes(),
                        cause: 0,
                        local_orders: 0,
                    };
                    let (done, _) = tokio::sync::oneshot::channel();
                    let _ = signal_tx.send(Signal::Send { events: vec![event], done }).await;
                }
            }
        }
    }

    tend_daemon::systemd::stopping();
    // Beacons stop first; the publisher then writes what they produced to
    // the outbox, so nothing seen is lost across a restart.
    running.stop().await;
    drop(event_tx);
    // Local jobs under way finish (their records go to the outbox) before
    // the publisher stops.
    enforcer_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), enforcer).await;
    publisher_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), publisher_task).await;
    // The masters mark this minion down now, not at their presence timeout.
    let goodbyes: Vec<_> = buses
        .iter()
        .cloned()
        .map(|bus| tokio::spawn(async move { bus.goodbye().await }))
        .collect();
    for goodbye in goodbyes {
        let _ = goodbye.await;
    }
    if let Some(path) = local_socket {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("tend-minion stopped");
    Ok(())
}

/// Reads the config again and builds its beacons (only the beacons are
/// reloaded: the bus, the identity and the outbox need a restart).
fn reload_beacons(config: &std::path::Path) -> anyhow::Result<Vec<tend_beacons::BeaconSpec>> {
    let mut cfg = MinionConfig::load(config).map_err(anyhow::Error::msg)?;
    Ok(tend_beacons::build_all(
        &config.display().to_string(),
        std::mem::take(&mut cfg.beacon),
    )?)
}

/// The local socket scripts on this server send events through.
fn local_endpoint(cfg: &MinionConfig) -> String {
    format!("ipc://{}", cfg.data_dir.join("minion.sock").display())
}

/// `tend-minion send`: hands events to the running minion and waits until
/// they are durable in its outbox.
fn send(cfg: &MinionConfig, tag: &str, data: &str, count: u64) -> anyhow::Result<()> {
    use tend_proto::v1::{SendEvents, control_reply, control_request};
    let mut base: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(data).context("DATA must be a JSON object")?;
    let endpoint = local_endpoint(cfg);
    let path = cfg.data_dir.join("minion.sock");
    if !path.exists() {
        anyhow::bail!(
            "no minion socket at {}: is tend-minion running with this config?",
            path.display()
        );
    }
    let mut client = tend_bus::ControlClient::connect(&endpoint)?.serving("the minion");
    let (mut first, mut last) = (0, 0);
    let mut i = 0;
    while i < count {
        let n = (count - i).min(local::MAX_SEND as u64);
        let batch = (i..i + n)
            .map(|k| {
                if count > 1 {
                    base.insert("n".into(), k.into());
                }
                serde_json::Value::Object(base.clone())
                    .to_string()
                    .into_bytes()
            })
            .collect();
        let mut failure = None;
        client.call(
            control_request::Body::SendEvents(SendEvents {
                tag: tag.to_string(),
                data: batch,
            }),
            Some(Duration::from_secs(30)),
            |r| {
                match r.body {
                    Some(control_reply::Body::Sent(s)) => {
                        if first == 0 {
                            first = s.first_seq;
                        }
                        last = s.last_seq;
                    }
                    Some(control_reply::Body::Failure(f)) => failure = Some(f.message),
                    _ => {}
                }
                true
            },
        )?;
        if let Some(f) = failure {
            anyhow::bail!("{f}");
        }
        i += n;
    }
    println!("sent {count} event(s), seq {first}..={last}");
    Ok(())
}
