//! Logging to stderr, set up from `[log]` and `RUST_LOG`, and shaped by
//! where stderr goes: colour on a terminal only; under journald
//! (`JOURNAL_STREAM` names this stderr) plain lines with a `<N>` priority
//! prefix and no timestamp, since the journal stamps and ranks each line
//! itself; anywhere else (a file, a pipe) plain lines with a timestamp.
//! Escape codes in a log file or in `journalctl` are noise an operator
//! has to strip before grepping.

use std::io::IsTerminal;

use serde::Deserialize;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// `level` (or `RUST_LOG`) is not a tracing filter.
    #[error(
        "bad log level {level:?}: {error} (use error, warn, info, debug or trace, or a filter like info,tend_bus=debug)"
    )]
    Level {
        level: String,
        error: tracing_subscriber::filter::ParseError,
    },
    /// Another global logger was installed first (a bug in the caller).
    #[error("{0}")]
    Init(Box<dyn std::error::Error + Send + Sync>),
}

/// `[log]` in either daemon's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`, or a full filter like
    /// `info,tend_bus=debug`. `RUST_LOG` wins when set.
    #[serde(default = "default_level")]
    pub level: String,
    /// `text` (human-readable) or `json` (one object per line).
    #[serde(default)]
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn default_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_level(),
            format: LogFormat::Text,
        }
    }
}

/// Where stderr goes, as far as the shape of a log line is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    /// A terminal: colour (unless `NO_COLOR` is set).
    Terminal,
    /// systemd's journal: it adds the time and reads the priority prefix.
    Journal,
    /// A file or a pipe: plain text.
    Plain,
}

impl Sink {
    fn of_stderr() -> Self {
        let stderr = std::io::stderr();
        if journal_is(&stderr) {
            Sink::Journal
        } else if stderr.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        {
            Sink::Terminal
        } else {
            Sink::Plain
        }
    }
}

/// Whether `stderr` is the journal stream systemd connected: `JOURNAL_STREAM`
/// holds `<device>:<inode>` of it. A process started from a service with
/// its stderr sent elsewhere inherits the variable, so the stream itself
/// is compared, as sd_journal_stream_fd(3) says to.
fn journal_is(stderr: &std::io::Stderr) -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream
        .to_str()
        .and_then(|s| s.split_once(':'))
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
    else {
        return false;
    };
    let Ok(fd) = stderr.as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// Sets up logging to stderr (see the module doc for the shape of a line).
pub fn init_logging(cfg: &LogConfig) -> Result<(), LogError> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v),
        _ => EnvFilter::try_new(&cfg.level),
    }
    .map_err(|error| LogError::Level {
        level: cfg.level.clone(),
        error,
    })?;
    let sink = Sink::of_stderr();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(sink == Sink::Terminal);
    let result = match (cfg.format, sink) {
        (LogFormat::Json, _) => builder.json().try_init(),
        (LogFormat::Text, Sink::Journal) => builder
            .event_format(Priority(tracing_subscriber::fmt::format().without_time()))
            .try_init(),
        (LogFormat::Text, _) => builder.try_init(),
    };
    result.map_err(LogError::Init)
}

/// Puts the syslog priority journald reads (`<3>` error .. `<7>` debug)
/// before each line, so `journalctl -p warning` selects by level.
struct Priority<F>(F);

impl<S, N, F> FormatEvent<S, N> for Priority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}
