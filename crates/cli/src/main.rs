//! tend: the operator's command line. Lists and filters events, applies
//! states, shows minions and jobs, by asking the master over its control
//! socket.

mod follow;
mod json;
mod keys;
mod show;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use tend_bus::ControlClient;
use tend_proto::v1::{
    ApplyCommand, GetJob, GetStatus, ListEvents, ListJobs, ListKeys, ListMinions, PingMinions,
    ReloadRules, RunCommand, control_reply, control_request,
};

#[derive(Parser)]
#[command(
    name = "tend",
    version,
    about = "Operate a tend master: events, states, minions, jobs",
    after_help = "Examples:\n  tend events --tag 'minion/*/beacon/*' --since 10m\n  tend events --follow --minion web1\n  tend apply web1 motd --test\n  tend minions\n  tend jobs show 12\n\nExit status: 0 when everything worked, 1 when a minion failed or did not\nanswer, 2 when tend itself could not do what was asked (bad arguments,\nno master).\n\nColour: only on a terminal, and never when NO_COLOR is set."
)]
struct Cli {
    /// The master's control endpoint.
    #[arg(
        long,
        global = true,
        env = "TEND_MASTER",
        default_value = "ipc:///run/tend/control.sock"
    )]
    master: String,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Shorthand for `--output json`.
    #[arg(long, global = true)]
    json: bool,
    /// Over TCP (`--master tcp://host:4511`): this operator's key, created
    /// on first use. The master must accept it: `tend keys accept
    /// --operator NAME` on the master host.
    #[arg(long, global = true, env = "TEND_KEY")]
    key: Option<PathBuf>,
    /// Over TCP: the operator name the key is known by.
    #[arg(long, global = true, env = "TEND_OPERATOR")]
    name: Option<String>,
    /// Over TCP: the master's key fingerprint. Without it, the first
    /// master's key is trusted and recorded, then required.
    #[arg(long, global = true, env = "TEND_MASTER_FINGERPRINT")]
    master_fingerprint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// List stored events, newest first; or follow them live.
    #[command(
        after_help = "Examples:\n  tend events --minion web1 --limit 20\n  tend events --tag 'minion/*/job/*' --json\n  tend events --follow --tag 'minion/*/beacon/file/**'\n  tend events -f --since 5m --json | jq .tag"
    )]
    Events {
        /// Follow: print events as they are stored, oldest first, until
        /// interrupted; goes on across master restarts without missing any.
        /// With --since, first the events stored since then.
        #[arg(long, short)]
        follow: bool,
        /// Only events from this minion.
        #[arg(long)]
        minion: Option<String>,
        /// Only events whose tag matches this glob (`*` crosses `/`).
        #[arg(long)]
        tag: Option<String>,
        /// Only events stored since then: a duration ago (`90s`, `10m`,
        /// `2h`) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// At most this many (without --follow).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Apply states to minions and show what changed; with no state, what
    /// the top file gives each minion (highstate).
    #[command(
        after_help = "Examples:\n  tend apply web1 motd\n  tend apply 'web*' motd nginx --test\n  tend apply 'os:debian and label.role:web'\n  tend apply web1,web2 motd"
    )]
    Apply {
        /// Minions: an id glob (`web*`), ids (`web1,web2`), facts
        /// (`os:debian`, `label.role:web`), combined with and / or / not.
        target: String,
        /// State names (`motd`, `web.nginx`); none: the top file's.
        states: Vec<String>,
        /// Dry run: change nothing, show what would change.
        #[arg(long)]
        test: bool,
        /// Seconds to wait for the minions.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// List the minions the master knows: key, connection, last seen, system.
    #[command(
        after_help = "Examples:\n  tend minions\n  tend minions --json | jq -r 'select(.connected) | .id'"
    )]
    Minions,
    /// One minion in detail: key, connection, every fact, recent events.
    #[command(after_help = "Example:\n  tend minion show web1")]
    Minion {
        #[command(subcommand)]
        what: MinionCommand,
    },
    /// Check that minions answer, and how fast.
    #[command(after_help = "Examples:\n  tend ping web1\n  tend ping '*' --timeout 2")]
    Ping {
        /// Minion id glob or comma-separated ids.
        target: String,
        /// Seconds to wait for each minion.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// List jobs, or show one.
    #[command(after_help = "Examples:\n  tend jobs --limit 10\n  tend jobs show 12 --json")]
    Jobs {
        #[command(subcommand)]
        what: Option<JobsCommand>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show the master's counters.
    #[command(after_help = "Example:\n  tend status --json | jq .counters.events_stored")]
    Status,
    /// Run a command on minions and show what each one printed.
    #[command(
        after_help = "Examples:\n  tend run web1 -- uptime\n  tend run 'label.role:web' -- systemctl is-active nginx\n  tend run '*' -- 'df -h / | tail -1'"
    )]
    Run {
        /// Minions, as for apply.
        target: String,
        /// The command: one argument is run by `sh -c`; several, directly.
        #[arg(last = true, required = true)]
        command: Vec<String>,
        /// Seconds to wait for the minions.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// The reactor's rules: reload them, or try one on an event offline.
    Reactor {
        #[command(subcommand)]
        what: ReactorCommand,
    },
    /// Manage minion and operator keys (like salt-key).
    #[command(
        after_help = "Examples:\n  tend keys list\n  tend keys accept 'web*'\n  tend keys accept web2 --fingerprint sha256:0f3c...\n  tend keys reject db3\n  tend keys accept --operator alice\n  tend keys label db1 role=db"
    )]
    Keys {
        #[command(subcommand)]
        what: keys::KeysCommand,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  tend completions bash > /etc/bash_completion.d/tend\n  tend completions zsh > \"${fpath[1]}/_tend\"\n  tend completions fish > ~/.config/fish/completions/tend.fish"
    )]
    Completions { shell: clap_complete::Shell },
    /// Write man pages: tend(1) and one per command.
    #[command(after_help = "Example:\n  tend man --dir /usr/local/share/man/man1")]
    Man {
        /// Where to write them; without it, tend(1) goes to stdout.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum MinionCommand {
    /// Everything the master knows of one minion.
    Show {
        id: String,
        /// Recent events to show.
        #[arg(long, default_value_t = 10)]
        events: u32,
    },
}

#[derive(Subcommand)]
enum ReactorCommand {
    /// Read reactor.d again (as SIGHUP does). A bad file is refused and the
    /// rules in force stay.
    Reload,
    /// Say what an event would do under a rule file, and why, without a
    /// master.
    #[command(
        after_help = "Example:\n  tend events --tag 'minion/web1/*' --limit 1 --json > e.json\n  tend reactor test reactor.d/restore.toml --event e.json"
    )]
    Test {
        /// A rule file.
        rule_file: PathBuf,
        /// A JSON event: as `tend events --json` prints one, or just
        /// {"minion": ..., "tag": ..., "data": {...}}.
        #[arg(long)]
        event: PathBuf,
    },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Show one job with every state result.
    Show { id: u64 },
}

/// How long to wait for the master on anything but an apply.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`tend events |
    // head`) would panic; like any Unix tool, just end instead.
    // SAFETY: setting a signal disposition to its default, before any
    // thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    show::init_colour();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tend: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let json = cli.json || cli.output == Output::Json;
    // What needs no master.
    match &cli.command {
        Command::Reactor {
            what: ReactorCommand::Test { rule_file, event },
        } => return reactor_test(rule_file, event, json),
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "tend", &mut std::io::stdout());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man { dir } => return man(dir.as_deref()),
        Command::Events {
            follow: true,
            minion,
            tag,
            since,
            ..
        } => {
            let since_us = match since {
                Some(s) => parse_since(s)?,
                None => 0,
            };
            return follow::run(
                || connect(&cli),
                follow::Filter {
                    minion: minion.clone().unwrap_or_default(),
                    tag: tag.clone().unwrap_or_default(),
                    since_us,
                },
                json,
            );
        }
        _ => {}
    }
    let mut client = connect(&cli)?;
    match cli.command {
        Command::Events {
            minion,
            tag,
            since,
            limit,
            ..
        } => {
            let since_us = match since {
                Some(s) => parse_since(&s)?,
                None => 0,
            };
            let events = list_events(
                &mut client,
                ListEvents {
                    minion: minion.unwrap_or_default(),
                    tag: tag.unwrap_or_default(),
                    since_us,
                    limit,
                    before_id: 0,
                },
            )?;
            if json {
                for e in &events {
                    println!("{}", json::event(e));
                }
            } else {
                show::events(&events);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply {
            target,
            states,
            test,
            timeout,
        } => {
            let mut job = None;
            let timeout = Duration::from_secs(timeout.max(1));
            let mut progress = show::Progress::new();
            call(
                &mut client,
                control_request::Body::Apply(ApplyCommand {
                    target,
                    states,
                    test,
                    timeout_ms: timeout.as_millis() as u32,
                }),
                timeout + QUERY_TIMEOUT,
                |body| match body {
                    control_reply::Body::Targeted(t) => progress.targeted(t.minions.len()),
                    control_reply::Body::MinionResult(r) => {
                        progress.clear();
                        if !json {
                            show::minion_result(&r);
                        }
                        progress.answered(matches!(
                            r.status.as_str(),
                            "ok" | "changed" | "would-change"
                        ));
                    }
                    control_reply::Body::Job(j) => job = Some(j),
                    _ => {}
                },
            )?;
            progress.clear();
            let job = job.ok_or_else(|| anyhow!("the master ended the apply without a job"))?;
            if json {
                println!("{}", json::job(&job));
            } else {
                show::job_summary(&job);
            }
            let failed = job.minions.iter().any(|m| {
                matches!(
                    m.status.as_str(),
                    "failed" | "timeout" | "unreachable" | "interrupted"
                )
            });
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Ping { target, timeout } => {
            let timeout = Duration::from_secs(timeout.max(1));
            let (mut ok, mut failed) = (0, 0);
            let mut progress = show::Progress::new();
            call(
                &mut client,
                control_request::Body::Ping(PingMinions {
                    target,
                    timeout_ms: timeout.as_millis() as u32,
                }),
                timeout + QUERY_TIMEOUT,
                |body| match body {
                    control_reply::Body::Targeted(t) => progress.targeted(t.minions.len()),
                    control_reply::Body::Pong(p) => {
                        if p.ok {
                            ok += 1;
                        } else {
                            failed += 1;
                        }
                        progress.clear();
                        if json {
                            println!("{}", json::pong(&p));
                        } else {
                            show::pong(&p);
                        }
                        progress.answered(p.ok);
                    }
                    _ => {}
                },
            )?;
            progress.clear();
            if !json {
                println!("{ok} of {} answered", ok + failed);
            }
            Ok(if failed > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Minion {
            what: MinionCommand::Show { id, events },
        } => minion_show(&mut client, &id, events, json),
        Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("handled before connecting")
        }
        Command::Minions => {
            let minions = list_minions(&mut client)?;
            if json {
                for m in &minions {
                    println!("{}", json::minion(m));
                }
            } else {
                show::minions(&minions);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Jobs { what, limit } => {
            match what {
                None => {
                    let mut jobs = Vec::new();
                    call(
                        &mut client,
                        control_request::Body::ListJobs(ListJobs { limit }),
                        QUERY_TIMEOUT,
                        |body| {
                            if let control_reply::Body::Jobs(list) = body {
                                jobs = list.jobs;
                            }
                        },
                    )?;
                    if json {
                        for j in &jobs {
                            println!("{}", json::job(j));
                        }
                    } else {
                        show::jobs(&jobs);
                    }
                }
                Some(JobsCommand::Show { id }) => {
                    let mut job = None;
                    call(
                        &mut client,
                        control_request::Body::GetJob(GetJob { id }),
                        QUERY_TIMEOUT,
                        |body| {
                            if let control_reply::Body::Job(j) = body {
                                job = Some(j);
                            }
                        },
                    )?;
                    let job = job.ok_or_else(|| anyhow!("no job {id}"))?;
                    if json {
                        println!("{}", json::job(&job));
                    } else {
                        show::job(&job);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            target,
            command,
            timeout,
        } => {
            let timeout = Duration::from_secs(timeout.max(1));
            let mut job = None;
            let mut progress = show::Progress::new();
            call(
                &mut client,
                control_request::Body::Run(RunCommand {
                    target,
                    argv: command,
                    timeout_ms: timeout.as_millis() as u32,
                }),
                timeout + QUERY_TIMEOUT,
                |body| match body {
                    control_reply::Body::Targeted(t) => progress.targeted(t.minions.len()),
                    control_reply::Body::MinionResult(r) => {
                        progress.clear();
                        if !json {
                            show::run_result(&r);
                        }
                        progress.answered(r.status == "ok");
                    }
                    control_reply::Body::Job(j) => job = Some(j),
                    _ => {}
                },
            )?;
            progress.clear();
            let job = job.ok_or_else(|| anyhow!("the master ended the run without a job"))?;
            if json {
                println!("{}", json::job(&job));
            } else {
                show::job_summary(&job);
            }
            let failed = job.minions.iter().any(|m| m.status != "ok");
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Reactor { what } => {
            match what {
                ReactorCommand::Reload => {
                    let mut rules = 0;
                    call(
                        &mut client,
                        control_request::Body::ReloadRules(ReloadRules {}),
                        QUERY_TIMEOUT,
                        |body| {
                            if let control_reply::Body::Reloaded(r) = body {
                                rules = r.rules;
                            }
                        },
                    )?;
                    if json {
                        println!("{}", serde_json::json!({"rules": rules}));
                    } else {
                        println!("reloaded: {rules} rule(s) in force");
                    }
                }
                ReactorCommand::Test { .. } => unreachable!("handled before connecting"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { what } => keys::exec(&mut client, what, json),
        Command::Status => {
            let mut status = None;
            call(
                &mut client,
                control_request::Body::GetStatus(GetStatus {}),
                QUERY_TIMEOUT,
                |body| {
                    if let control_reply::Body::Status(s) = body {
                        status = Some(s);
                    }
                },
            )?;
            let status = status.ok_or_else(|| anyhow!("the master sent no status"))?;
            if json {
                println!("{}", json::status(&status));
            } else {
                show::status(&status);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn connect(cli: &Cli) -> anyhow::Result<ControlClient> {
    let endpoint = cli.master.as_str();
    if endpoint.starts_with("tcp://") {
        return connect_operator(cli);
    }
    if let Some(path) = endpoint.strip_prefix("ipc://") {
        if !Path::new(path).exists() {
            bail!(
                "cannot reach the master at {endpoint}: no socket at {path}. Is tend-master running? \
                 Is the path right? (set --master or TEND_MASTER)"
            );
        }
        // ZeroMQ would wait for a listener that will never come; a plain
        // connect says at once whether one is there.
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => bail!(
                "cannot reach the master at {endpoint}: nothing listens on {path} (left by a master \
                 that stopped?). Is tend-master running?"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
                "cannot open the control socket {path}: permission denied. It is for the master's \
                 own user; or use --master tcp://HOST:PORT with an operator key"
            ),
            Err(e) => bail!("cannot reach the master at {endpoint}: {e}"),
        }
    }
    ControlClient::connect(endpoint)
        .with_context(|| format!("cannot reach the master at {endpoint}"))
}

/// Where the CLI keeps its own files: `$XDG_CONFIG_HOME/tend` or
/// `~/.config/tend`.
fn config_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("tend"));
    }
    let home = std::env::var_os("HOME").ok_or_else(|| anyhow!("no HOME: set --key"))?;
    Ok(PathBuf::from(home).join(".config/tend"))
}

/// Over TCP, as an operator: the signed handshake with this operator's key.
fn connect_operator(cli: &Cli) -> anyhow::Result<ControlClient> {
    let endpoint = cli.master.as_str();
    check_tcp(endpoint)?;
    let key = match &cli.key {
        Some(k) => k.clone(),
        None => config_dir()?.join("operator.key"),
    };
    let identity = std::sync::Arc::new(
        tend_bus::Identity::load_or_create(&key)
            .with_context(|| format!("operator key {}", key.display()))?,
    );
    let name = cli
        .name
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "operator".into());
    let pin = match &cli.master_fingerprint {
        Some(fp) => tend_bus::MasterPin::Fingerprint(fp.clone()),
        None => {
            let safe: String = endpoint
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            tend_bus::MasterPin::FirstUse(config_dir()?.join("masters").join(safe))
        }
    };
    match ControlClient::connect_operator(endpoint, identity.clone(), &name, &pin, QUERY_TIMEOUT) {
        Ok(c) => Ok(c),
        Err(tend_bus::BusError::Refused { status, .. }) if status == "pending" => bail!(
            "the master at {endpoint} has not accepted operator {name:?} (key {}) yet. \
             On the master host run: tend keys accept --operator {name}",
            identity.fingerprint()
        ),
        Err(tend_bus::BusError::Timeout { .. }) => bail!(
            "no answer from the master at {endpoint} within {} s. Is tend-master running? Is the port right?",
            QUERY_TIMEOUT.as_secs()
        ),
        Err(e) => Err(anyhow!(
            "cannot open a session with the master at {endpoint}: {e}"
        )),
    }
}

/// Says at once when nothing listens at a `tcp://` endpoint (ZeroMQ would
/// wait out the whole timeout).
fn check_tcp(endpoint: &str) -> anyhow::Result<()> {
    use std::net::ToSocketAddrs;
    let hostport = endpoint.trim_start_matches("tcp://");
    let addrs: Vec<_> = hostport
        .to_socket_addrs()
        .with_context(|| format!("--master {endpoint}: not a host:port I can resolve"))?
        .collect();
    let mut last = None;
    for addr in addrs {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => bail!(
            "cannot reach the master at {endpoint}: connection refused. Is tend-master running? \
             Is the port its command port?"
        ),
        Some(e) => bail!("cannot reach the master at {endpoint}: {e}"),
        None => bail!("--master {endpoint}: the name resolves to no address"),
    }
}

/// Sends one request and hands every part of the answer to `on_body`; a
/// failure from the master becomes the error.
fn call(
    client: &mut ControlClient,
    body: control_request::Body,
    timeout: Duration,
    mut on_body: impl FnMut(control_reply::Body),
) -> anyhow::Result<()> {
    let mut failure = None;
    let endpoint = client.endpoint().to_string();
    client
        .call(body, Some(timeout), |reply| {
            match reply.body {
                Some(control_reply::Body::Failure(f)) => failure = Some(f.message),
                Some(b) => on_body(b),
                None => {}
            }
            true
        })
        .map_err(|e| match e {
            tend_bus::BusError::Timeout { .. } => anyhow!(
                "no answer from the master at {endpoint} within {} s. Is tend-master running? \
                 (set --master or TEND_MASTER)",
                timeout.as_secs()
            ),
            other => anyhow!("talking to the master at {endpoint}: {other}"),
        })?;
    match failure {
        Some(message) => Err(anyhow::Error::new(MasterSaid(message))),
        None => Ok(()),
    }
}

/// The master refused a request and said why (as opposed to not answering).
#[derive(Debug)]
pub struct MasterSaid(pub String);

impl std::fmt::Display for MasterSaid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MasterSaid {}

/// `--since`: a duration ago, or an RFC 3339 time; microseconds.
fn parse_since(s: &str) -> anyhow::Result<i64> {
    let at = if let Ok(d) = humantime::parse_duration(s) {
        SystemTime::now()
            .checked_sub(d)
            .ok_or_else(|| anyhow!("--since {s}: too long ago"))?
    } else if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        t
    } else {
        bail!("--since {s:?}: give a duration (90s, 10m, 2h) or a time (2026-11-29T10:00:00Z)");
    };
    Ok(at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0))
}

/// `tend reactor test`: the master's own matching and conditions, offline.
fn reactor_test(rule_file: &Path, event_file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(rule_file)
        .with_context(|| format!("cannot read the rule file {}", rule_file.display()))?;
    let rules = tend_reactor::Rules::from_texts(&[(rule_file.display().to_string(), text)])?;
    let raw = std::fs::read_to_string(event_file)
        .with_context(|| format!("cannot read the event {}", event_file.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(raw.lines().find(|l| !l.trim().is_empty()).unwrap_or("{}"))
            .with_context(|| format!("{}: not a JSON event", event_file.display()))?;
    let tag = v["tag"]
        .as_str()
        .ok_or_else(|| anyhow!("{}: the event has no \"tag\"", event_file.display()))?;
    let event = tend_proto::v1::Event {
        minion: v["minion"].as_str().unwrap_or_default().to_string(),
        seq: v["seq"].as_u64().unwrap_or(0),
        tag: tag.to_string(),
        time_us: tend_proto::now_us(),
        data: v
            .get("data")
            .map(|d| d.to_string())
            .unwrap_or_else(|| "{}".into())
            .into_bytes(),
        cause: v["cause"].as_u64().unwrap_or(0),
    };
    let explanation = tend_reactor::Reactor::explain(&rules, &event);
    if json {
        let matched: Vec<serde_json::Value> = rules
            .matches(&event)
            .iter()
            .map(|m| {
                let r = rules.get(m.rule);
                serde_json::json!({
                    "rule": &*r.name,
                    "file": r.file,
                    "condition": r.when,
                    "holds": m.holds,
                    "error": m.error,
                    "actions": r.actions.iter().map(|a| a.kind()).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"tag": event.tag, "matched": matched, "explanation": explanation})
        );
    } else {
        for line in explanation {
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `tend man`: tend(1) to stdout, or with a directory, tend(1) and
/// tend-COMMAND(1) for every command, from the same definitions as `--help`.
fn man(dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let Some(dir) = dir else {
        clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// `tend minion show ID`: the minion, its key and its recent events.
fn minion_show(
    client: &mut ControlClient,
    id: &str,
    recent: u32,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let Some(minion) = list_minions(client)?.into_iter().find(|m| m.id == id) else {
        bail!("the master knows no minion {id:?}: `tend minions` lists those it knows");
    };
    let mut fingerprint = String::new();
    call(
        client,
        control_request::Body::ListKeys(ListKeys {}),
        QUERY_TIMEOUT,
        |body| {
            if let control_reply::Body::Keys(k) = body {
                fingerprint = k
                    .keys
                    .into_iter()
                    .find(|k| k.name == id && k.kind == "minion")
                    .map(|k| k.fingerprint)
                    .unwrap_or_default();
            }
        },
    )?;
    let events = if recent > 0 {
        list_events(
            client,
            ListEvents {
                minion: id.to_string(),
                limit: recent,
                ..Default::default()
            },
        )?
    } else {
        Vec::new()
    };
    // Its last jobs: among the master's recent ones, those it was in.
    let mut jobs = Vec::new();
    call(
        client,
        control_request::Body::ListJobs(ListJobs { limit: 500 }),
        QUERY_TIMEOUT,
        |body| {
            if let control_reply::Body::Jobs(list) = body {
                jobs = list.jobs;
            }
        },
    )?;
    jobs.retain(|j| j.minions.iter().any(|m| m.minion == id));
    jobs.truncate(5);
    if json {
        let mut v = json::minion(&minion);
        v["fingerprint"] = serde_json::json!(fingerprint);
        v["events"] = events.iter().map(json::event).collect();
        v["jobs"] = jobs.iter().map(json::job).collect();
        println!("{v}");
    } else {
        show::minion(&minion, &fingerprint, &events, &jobs);
    }
    Ok(ExitCode::SUCCESS)
}

/// Events matching `query`, newest first: the master answers a long list
/// in pages, and each next page is asked for in turn.
fn list_events(
    client: &mut ControlClient,
    mut query: ListEvents,
) -> anyhow::Result<Vec<tend_proto::v1::StoredEvent>> {
    let mut events = Vec::new();
    // 0 is the master's default, answered in one page.
    let total = query.limit as usize;
    loop {
        let mut next = 0;
        call(
            client,
            control_request::Body::ListEvents(query.clone()),
            QUERY_TIMEOUT,
            |body| {
                if let control_reply::Body::Events(list) = body {
                    events.extend(list.events);
                    if list.next_before_id > 0 {
                        next = list.next_before_id;
                    }
                }
            },
        )?;
        if next == 0 || total == 0 || events.len() >= total {
            return Ok(events);
        }
        query.before_id = next;
        query.limit = (total - events.len()) as u32;
    }
}

fn list_minions(client: &mut ControlClient) -> anyhow::Result<Vec<tend_proto::v1::MinionInfo>> {
    let mut minions = Vec::new();
    call(
        client,
        control_request::Body::ListMinions(ListMinions {}),
        QUERY_TIMEOUT,
        |body| {
            if let control_reply::Body::Minions(list) = body {
                minions = list.minions;
            }
        },
    )?;
    Ok(minions)
}
