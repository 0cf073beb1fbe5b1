//! tend-bench: tend measured on this machine, with real daemons on
//! loopback and a fleet of simulated minions; and the demo, which is the
//! same setup shown to a person.
//!
//! Every benchmark prints min / median / p99 / max (and throughput where it
//! applies); `--json` prints one JSON object. No benchmark asserts a time.
//! Build everything first (`cargo build --release --workspace`): the
//! benchmarks start the binaries next to this one.

mod cluster;
mod demo;
mod edits;
mod fleet;
mod measure;
mod summary;
mod workload;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "tend's benchmarks, and the demo")]
struct Args {
    /// Print one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Run the masters on PostgreSQL: a maintenance connection string
    /// (`host=127.0.0.1 user=postgres dbname=postgres`); each master gets
    /// a fresh database there, dropped afterwards.
    #[arg(long, global = true, env = "TEND_BENCH_POSTGRES")]
    postgres: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a master and a minion on 127.0.0.1 and show a hand edit being
    /// put back.
    Demo {
        /// Stop once shown, even on a terminal.
        #[arg(long)]
        no_wait: bool,
    },
    /// Drift -> restore: edit a managed file by hand N times; time from
    /// the write to the restored content, and to the event stored.
    Drift {
        #[arg(long, default_value_t = 200)]
        edits: usize,
    },
    /// Drift -> restore with the master, then cut off (the master
    /// stopped) by the minion itself from its standing orders; and the
    /// minion's RSS and idle CPU while it enforces.
    Autonomy {
        #[arg(long, default_value_t = 200)]
        edits: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// K simulated minions publish as fast as the master takes them, through
    /// R rules; events/s stored, loss counted.
    Ingest {
        #[arg(long, default_value_t = 100)]
        minions: usize,
        /// Events per minion.
        #[arg(long, default_value_t = 10_000)]
        events: u64,
        #[arg(long, default_value_t = 100)]
        rules: usize,
    },
    /// Apply a trivial state to K simulated minions; time until every reply
    /// is in.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        minions: usize,
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// Connect K simulated minions to one master: connect time, master RSS,
    /// heartbeat round trip.
    Scale {
        #[arg(long, default_value_t = 10_000)]
        minions: usize,
    },
    /// Kill -9 the master under K simulated minions and restart it: time
    /// until all are back.
    Restart {
        #[arg(long, default_value_t = 1000)]
        minions: usize,
    },
    /// Master start -> ready; minion start -> first answered ping.
    Startup {
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
    /// One `tend apply` of one state, CLI process start to exit.
    Apply {
        #[arg(long, default_value_t = 50)]
        runs: usize,
    },
    /// How soon `tend events --follow` prints an event.
    Follow {
        #[arg(long, default_value_t = 100)]
        events: usize,
    },
    /// RSS and CPU of an idle minion and master.
    Footprint {
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// The process beacon's look against a full process-table scan, with
    /// many processes running.
    Processes {
        #[arg(long, default_value_t = 1000)]
        extra: usize,
        #[arg(long, default_value_t = 200)]
        looks: usize,
    },
    /// A minion's outbox end to end, fsync on and off side by side.
    Outbox {
        #[arg(long, default_value_t = 100_000)]
        events: u64,
    },
    /// Events per second through the reactor (matching and conditions)
    /// with 10, 100 and 1,000 rules.
    Rules {
        #[arg(long, default_value_t = 500_000)]
        events: usize,
    },
    /// N file.managed states that are already correct, applied by the
    /// minion's engine.
    States {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// The throughput cost of sealing frames, with and without, side by side.
    Seal {
        #[arg(long, default_value_t = 2_000_000)]
        events: u64,
    },
    /// Part of a fleet spread over processes (started by `scale`).
    #[command(hide = true)]
    FleetWorker {
        #[arg(long)]
        first: usize,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        events: u64,
        #[arg(long)]
        event_endpoint: String,
        #[arg(long)]
        command_endpoint: String,
    },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(pg) = &args.postgres {
        // Read where clusters are laid out (and by fleet workers).
        // SAFETY: at start, before any thread.
        unsafe { std::env::set_var("TEND_BENCH_POSTGRES", pg) };
    }
    let report = match args.command {
        Cmd::Demo { no_wait } => demo::demo(no_wait).map(|()| None),
        Cmd::Drift { edits } => measure::drift(edits).map(Some),
        Cmd::Autonomy { edits, seconds } => measure::autonomy(edits, seconds).map(Some),
        Cmd::Ingest {
            minions,
            events,
            rules,
        } => measure::ingest(minions, events, rules).map(Some),
        Cmd::Fanout { minions, runs } => measure::fanout(minions, runs).map(Some),
        Cmd::Scale { minions } => measure::scale(minions).map(Some),
        Cmd::Restart { minions } => measure::restart(minions).map(Some),
        Cmd::Startup { runs } => measure::startup(runs).map(Some),
        Cmd::Apply { runs } => measure::apply(runs).map(Some),
        Cmd::Follow { events } => measure::follow(events).map(Some),
        Cmd::Footprint { seconds } => measure::footprint(seconds).map(Some),
        Cmd::Processes { extra, looks } => measure::processes(extra, looks).map(Some),
        Cmd::Outbox { events } => measure::outbox(events).map(Some),
        Cmd::Seal { events } => measure::seal(events).map(Some),
        Cmd::States { count, runs } => measure::states(count, runs).map(Some),
        Cmd::Rules { events } => measure::rules(events).map(Some),
        Cmd::FleetWorker {
            first,
            count,
            prefix,
            events,
            event_endpoint,
            command_endpoint,
        } => fleet::worker(
            fleet::FleetConfig {
                count,
                prefix,
                event_endpoint,
                command_endpoint,
                events_per_sim: events,
            },
            first,
        )
        .map(|()| None),
    };
    match report {
        Ok(Some(r)) => {
            r.print(args.json);
            std::process::ExitCode::SUCCESS
        }
        Ok(None) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tend-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
