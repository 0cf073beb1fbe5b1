//! tend-minion: runs the beacons, keeps events in a durable outbox until
//! the master has them, and applies states when the master says so.

mod commands;
mod config;
mod facts;
mod outbox;
mod publisher;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tend_beacons::{BeaconCtx, Emitter};
use tend_bus::{BusStats, MinionBus, MinionBusConfig, MinionInbound};
use tend_state::Ledger;
use tokio::sync::mpsc;

use crate::commands::Commands;
use crate::config::MinionConfig;
use crate::publisher::{Publisher, Signal};

#[derive(Parser)]
#[command(
    version,
    about = "tend minion: watches this server and keeps it in its desired state"
)]
struct Args {
    /// Path to minion.toml.
    #[arg(long, short, default_value = "/etc/tend/minion.toml")]
    config: PathBuf,
    /// Validate the config (and every beacon in it), then exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let cfg = match MinionConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tend-minion: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Err(e) = tend_daemon::init_logging(&cfg.log) {
        eprintln!(
            "tend-minion: config file {}: [log]: {e}",
            args.config.display()
        );
        return std::process::ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tend-minion: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, cfg)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("tend-minion: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, mut cfg: MinionConfig) -> anyhow::Result<()> {
    let id = cfg.minion_id().map_err(anyhow::Error::msg)?;
    let config_file = args.config.display().to_string();
    let beacons = tend_beacons::build_all(&config_file, std::mem::take(&mut cfg.beacon))?;
    if args.check_config {
        println!(
            "{config_file}: ok (minion {id}, {} beacon(s) enabled)",
            beacons.len()
        );
        return Ok(());
    }

    let outbox_dir = cfg.data_dir.join("outbox");
    let outbox = outbox::Outbox::open(&outbox_dir, cfg.outbox.max_bytes, cfg.outbox.fsync)
        .with_context(|| format!("cannot open the outbox in {}", outbox_dir.display()))?;
    let shutdown = tend_daemon::shutdown_on_signals()?;

    let stats = Arc::new(BusStats::default());
    let (bus, mut inbound) = MinionBus::connect(
        MinionBusConfig {
            minion: id.clone(),
            event_endpoint: cfg.event_endpoint(),
            command_endpoint: cfg.command_endpoint(),
            max_message_size: cfg.max_message_size,
            master_timeout: Duration::from_millis(cfg.master_timeout_ms),
            version: env!("CARGO_PKG_VERSION").into(),
            facts: facts::gather(&cfg.labels),
        },
        stats,
    )?;
    let bus = Arc::new(bus);
    tracing::info!(
        minion = %id,
        events = %cfg.event_endpoint(),
        commands = %cfg.command_endpoint(),
        beacons = beacons.len(),
        unacked = outbox.unacked(),
        outbox_bytes = outbox.bytes(),
        "tend-minion started"
    );

    let ledger = Arc::new(Ledger::default());
    let (event_tx, event_rx) = mpsc::channel(4096);
    let beacon_stop = shutdown.child_token();
    let mut beacon_tasks = Vec::new();
    for spec in beacons {
        tracing::info!(beacon = %spec.name, kind = %spec.kind, "beacon started");
        beacon_tasks.push(tokio::spawn(spec.beacon.run(BeaconCtx {
            emit: Emitter::new(&spec.name, event_tx.clone()),
            shutdown: beacon_stop.clone(),
            ledger: ledger.clone(),
        })));
    }
    drop(event_tx);

    let (signal_tx, signal_rx) = mpsc::channel(1024);
    let publisher = Publisher::new(id.clone(), outbox, bus.clone());
    let publisher_stop = tokio_util::sync::CancellationToken::new();
    let publisher_task = tokio::spawn(publisher.run(event_rx, signal_rx, publisher_stop.clone()));

    let commands = Arc::new(Commands {
        bus: bus.clone(),
        ledger,
        publisher: signal_tx.clone(),
        state_run: tokio::sync::Mutex::new(()),
    });

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            msg = inbound.recv() => match msg {
                None => break,
                Some(MinionInbound::Request(req)) => commands.handle(req).await,
                Some(MinionInbound::Connected { .. }) => {
                    let _ = signal_tx.send(Signal::Connected).await;
                }
                Some(MinionInbound::Disconnected { .. }) => {
                    let _ = signal_tx.send(Signal::Disconnected).await;
                }
                Some(MinionInbound::Subscribed) => {
                    let _ = signal_tx.send(Signal::Subscribed).await;
                }
            }
        }
    }

    // Beacons stop first; the publisher then writes what they produced to
    // the outbox, so nothing seen is lost across a restart.
    for t in beacon_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    publisher_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), publisher_task).await;
    tracing::info!("tend-minion stopped");
    Ok(())
}
