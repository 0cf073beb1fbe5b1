//! Prometheus metrics over HTTP, for both daemons: off unless
//! `metrics_listen` is set, one `GET /metrics` answered in the text
//! exposition format (version 0.0.4).
//!
//! Hand-written rather than hyper or the prometheus crates: the server
//! answers one path of one method, and the minion's budget is 10 MB of
//! memory, most of it code; an HTTP stack would be the largest thing in
//! it. The counters themselves are the daemons' own atomics, read at
//! scrape time.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

/// A request head larger than this is refused.
const MAX_REQUEST: usize = 8 * 1024;
/// A client gets this long to send its request head...
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// ... and this long to read the answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Pages rendered at once, at most; more wait their turn (a request is
/// read before a turn is taken, so a client that says nothing holds none).
const MAX_RENDERS: usize = 16;
/// Connections open at once, at most. Past that the oldest is closed: idle
/// connections held open can never lock a scraper out, only be pushed out
/// by it.
const MAX_CONNECTIONS: usize = 256;

/// Job and apply durations, in seconds: from a few milliseconds (a file
/// put back) to minutes (a package install).
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A histogram of durations with fixed buckets, updated without locks.
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), and one more for above the last bound.
    counts: Vec<AtomicU64>,
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new(DURATION_BUCKETS)
    }
}

/// A page of metrics being written.
#[derive(Default)]
pub struct Text {
    out: String,
}

/// A label value, escaped as the format asks.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

impl Text {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// A counter; `name` ends in `_total`.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.head(name, "counter", help);
        let _ = writeln!(self.out, "{name} {value}");
    }

    /// A counter with one label, one series per value.
    pub fn counters<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        series: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        self.head(name, "counter", help);
        for (v, n) in series {
            let _ = writeln!(self.out, "{name}{} {n}", labels(&[(label, v)]));
        }
    }

    /// A set of named counters (a snapshot), as `<prefix>_<name>_total`,
    /// each helped by its name.
    pub fn counter_set(&mut self, prefix: &str, what: &str, set: Vec<(&str, u64)>) {
        for (name, value) in set {
            self.counter(
                &format!("{prefix}_{name}_total"),
                &format!("{what}: {}.", name.replace('_', " ")),
                value,
            );
        }
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.head(name, "gauge", help);
        let _ = writeln!(self.out, "{name} {value}");
    }

    /// Histograms with one label, one per value.
    pub fn histograms(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        series: &[(&str, &Histogram)],
    ) {
        self.head(name, "histogram", help);
        for (v, h) in series {
            let mut cumulative = 0;
            for (i, bound) in h.bounds.iter().enumerate() {
                cumulative += h.counts[i].load(Ordering::Relaxed);
                let le = bound.to_string();
                let _ = writeln!(
                    self.out,
                    "{name}_bucket{} {cumulative}",
                    labels(&[(label, v), ("le", &le)])
                );
            }
            cumulative += h.counts[h.bounds.len()].load(Ordering::Relaxed);
            let _ = writeln!(
                self.out,
                "{name}_bucket{} {cumulative}",
                labels(&[(label, v), ("le", "+Inf")])
            );
            let sum = h.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(self.out, "{name}_sum{} {sum}", labels(&[(label, v)]));
            let _ = writeln!(
                self.out,
                "{name}_count{} {cumulative}",
                labels(&[(label, v)])
            );
        }
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// What renders the page, at every scrape.
pub type Render = Arc<dyn Fn(&mut Text) + Send + Sync>;

/// Why the metrics listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// `metrics_listen` is not an IP address and a port.
    #[error("key `metrics_listen`: {listen:?} is not an address like 127.0.0.1:9470 ({error})")]
    Parse {
        listen: String,
        error: std::net::AddrParseError,
    },
    /// Binding the address failed (in use, or not this host's).
    #[error("key `metrics_listen`: cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
}

/// Checks a `metrics_listen` value: an IP address and a port.
pub fn parse_listen(listen: &str) -> Result<SocketAddr, ListenError> {
    listen.parse().map_err(|error| ListenError::Parse {
        listen: listen.to_string(),
        error,
    })
}

/// Binds the metrics listener (at startup, so a bad address stops the
/// daemon with a clear error).
pub async fn bind(listen: &str) -> Result<TcpListener, ListenError> {
    let addr = parse_listen(listen)?;
    TcpListener::bind(addr)
        .await
        .map_err(|error| ListenError::Bind { addr, error })
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, render: Render, shutdown: CancellationToken) {
    let renders = Arc::new(tokio::sync::Semaphore::new(MAX_RENDERS));
    // Open connections, oldest first: (number, its task).
    let open: Arc<Mutex<VecDeque<(u64, AbortHandle)>>> = Arc::default();
    let mut next: u64 = 0;
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors, say: wait a little, go on.
                    tracing::warn!(error = %e, "metrics: cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        next += 1;
        let id = next;
        let (render, renders, open_set) = (render.clone(), renders.clone(), open.clone());
        let task = tokio::spawn(async move {
            match answer(stream, &render, &renders).await {
                Ok(()) => {}
                Err(e) => tracing::debug!(%peer, error = %e, "metrics: client dropped"),
            }
            lock(&open_set).retain(|(n, _)| *n != id);
        });
        let mut open = lock(&open);
        open.push_back((id, task.abort_handle()));
        while open.len() > MAX_CONNECTIONS {
            if let Some((_, oldest)) = open.pop_front() {
                oldest.abort();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what.to_string())
}

async fn answer(
    mut stream: TcpStream,
    render: &Render,
    renders: &tokio::sync::Semaphore,
) -> std::io::Result<()> {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Err(timed_out("no request within the time allowed")),
    };
    let Some(head) = head else {
        return Ok(()); // closed before a whole request
    };
    let Ok(_turn) = renders.acquire().await else {
        return Ok(());
    };
    tokio::time::timeout(ANSWER_TIMEOUT, respond(&mut stream, &head, render))
        .await
        .map_err(|_| timed_out("the answer was not read in time"))?
}

/// The request head, up to its blank line; None if the client closed
/// first. A head over the limit is Err(431).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Head>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(Head::Complete(
                String::from_utf8_lossy(&buf[..i]).into_owned(),
            )));
        }
        if buf.len() > MAX_REQUEST {
            return Ok(Some(Head::TooLarge));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

enum Head {
    Complete(String),
    TooLarge,
}

async fn respond(stream: &mut TcpStream, head: &Head, render: &Render) -> std::io::Result<()> {
    let head = match head {
        Head::Complete(h) => h,
        Head::TooLarge => {
            return reply(
                stream,
                "431 Request Header Fields Too Large",
                "request too large\n",
                false,
            )
            .await;
        }
    };
    let mut parts = head.lines().next().unwrap_or("").split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let (Some(method), Some(target), Some(version)) = (method, target, version) else {
        return reply(
            stream,
            "400 Bad Request",
            "not an HTTP request line\n",
            false,
        )
        .await;
    };
    if !version.starts_with("HTTP/1.") {
        return reply(stream, "400 Bad Request", "HTTP/1.x only\n", false).await;
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return reply(stream, "405 Method Not Allowed", "GET /metrics\n", false).await;
    }
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return reply(
            stream,
            "404 Not Found",
            "metrics are at /metrics\n",
            head_only,
        )
        .await;
    }
    let mut text = Text::default();
    render(&mut text);
    let body = text.finish();
    let header = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes()).await?;
    if !head_only {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

async fn reply(
    stream: &mut TcpStream,
    status: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes()).await?;
    if !head_only {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let h = Histogram::new(&[0.01, 0.1]);
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_secs(3));
        let mut t = Text::default();
        t.histograms("d_seconds", "d", "kind", &[("apply", &h)]);
        let page = t.finish();
        for want in [
            "d_seconds_bucket{kind=\"apply\",le=\"0.01\"} 1",
            "d_seconds_bucket{kind=\"apply\",le=\"0.1\"} 2",
            "d_seconds_bucket{kind=\"apply\",le=\"+Inf\"} 3",
            "d_seconds_count{kind=\"apply\"} 3",
            "d_seconds_sum{kind=\"apply\"} 3.055",
        ] {
            assert!(page.contains(want), "{want} in\n{page}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut t = Text::default();
        t.counters("x_total", "x", "beacon", [("a\"b\\c\nd", 1)]);
        assert!(t.finish().contains(r#"x_total{beacon="a\"b\\c\nd"} 1"#));
    }

    #[tokio::test]
    async fn serves_metrics_and_refuses_the_rest() {
        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let render: Render = Arc::new(|t: &mut Text| t.counter("up_total", "up", 1));
        tokio::spawn(serve(listener, render, stop.clone()));
        let ask = |req: &'static [u8]| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(req).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(
            ok.starts_with("HTTP/1.1 200") && ok.ends_with("up_total 1\n"),
            "{ok}"
        );
        assert!(
            ask(b"GET / HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 404")
        );
        assert!(
            ask(b"POST /metrics HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 405")
        );
        assert!(ask(b"garbage\r\n\r\n").await.starts_with("HTTP/1.1 400"));
        let big = Box::leak(vec![b'a'; 20_000].into_boxed_slice());
        assert!(ask(big).await.starts_with("HTTP/1.1 431"));
        assert!(
            bind("localhost")
                .await
                .unwrap_err()
                .to_string()
                .contains("metrics_listen")
        );
        stop.cancel();
    }
}
