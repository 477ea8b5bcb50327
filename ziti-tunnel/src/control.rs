//! The control surface of `zt-tunnel run`: a status socket and a Prometheus endpoint, and the
//! `zt-tunnel status` client of the socket.
//!
//! Status socket (`run --status-socket PATH`): a Unix socket, mode 0600, removed on exit.
//! Each request is one line of JSON, each answer one line of JSON:
//!
//! ```text
//! {"cmd":"status"}                          -> {"ok":true,"identities":[..],"services":[..],"routers":[..],"flows":[..],"udp_flows":0,"totals":{..}}
//! {"cmd":"set-log-level","level":"debug"}   -> {"ok":true} | {"ok":false,"error":".."}
//! ```
//!
//! At most [`MAX_CLIENTS`] clients at once (more get `{"ok":false,"error":"busy"}` and are
//! closed), requests of at most [`MAX_LINE`] bytes, clients idle for [`IDLE`] are closed.
//!
//! Metrics (`run --metrics ADDR`): `GET /metrics` over HTTP/1.1 answers
//! [`TunnelStatus::prometheus`]; one request per connection, at most [`MAX_HTTP`] connections
//! at once.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use ziti_tunnel::tunnel::{DialOutcome, TunnelMonitor, TunnelStatus};

/// Status socket clients served at once.
const MAX_CLIENTS: usize = 4;
/// Longest request line, bytes.
const MAX_LINE: usize = 64 * 1024;
/// A status client silent this long is closed.
const IDLE: Duration = Duration::from_secs(30);
/// Metrics connections served at once.
const MAX_HTTP: usize = 8;
/// Largest HTTP request head, bytes.
const MAX_HTTP_HEAD: usize = 8 * 1024;
/// Time a metrics client has to send its request and take the answer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest status answer the client accepts, bytes.
const MAX_ANSWER: usize = 256 * 1024 * 1024;

/// The listeners of `zt-tunnel run`, bound before the tunnel starts.
pub struct Listeners {
    status: Option<(UnixListener, SocketFile)>,
    metrics: Option<TcpListener>,
}

/// The status socket's file, removed when dropped.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The serving tasks; dropping this stops them and removes the socket file.
pub struct Serving {
    tasks: Vec<JoinHandle<()>>,
    _socket: Option<SocketFile>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Binds the status socket and the metrics listener (either may be absent).
pub async fn bind(status: Option<&Path>, metrics: Option<SocketAddr>) -> anyhow::Result<Listeners> {
    let status = match status {
        Some(path) => Some(bind_socket(path)?),
        None => None,
    };
    let metrics = match metrics {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {addr}"))?;
            tracing::info!(listen = %addr, "metrics at http://{addr}/metrics");
            Some(l)
        }
        None => None,
    };
    Ok(Listeners { status, metrics })
}

impl Listeners {
    /// Starts answering on the listeners with what `monitor` reports.
    pub fn serve(self, monitor: TunnelMonitor) -> Serving {
        let mut tasks = Vec::new();
        let mut socket = None;
        if let Some((listener, file)) = self.status {
            tasks.push(tokio::spawn(serve_status(listener, monitor.clone())));
            socket = Some(file);
        }
        if let Some(listener) = self.metrics {
            tasks.push(tokio::spawn(serve_metrics(listener, monitor)));
        }
        Serving {
            tasks,
            _socket: socket,
        }
    }
}

fn bind_socket(path: &Path) -> anyhow::Result<(UnixListener, SocketFile)> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "status socket {} is in use (another zt-tunnel running?)",
                    path.display()
                );
            }
            // Left behind by a process that did not exit cleanly.
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
        }
        Ok(_) => bail!("{} exists and is not a socket", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot look at {}", path.display()));
        }
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot listen on status socket {}", path.display()))?;
    let file = SocketFile(path.to_path_buf());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} mode 0600", path.display()))?;
    tracing::info!(socket = %path.display(), "status socket up");
    Ok((listener, file))
}

async fn serve_status(listener: UnixListener, monitor: TunnelMonitor) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!(error = %e, "status socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Best effort: the answer fits any socket buffer.
            let _ = stream.try_write(b"{\"ok\":false,\"error\":\"busy\"}\n");
            continue;
        };
        let monitor = monitor.clone();
        tokio::spawn(async move {
            status_client(stream, &monitor).await;
            drop(slot);
        });
    }
}

/// A request on the status socket.
#[derive(Debug, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
enum Request {
    Status,
    SetLogLevel { level: String },
}

async fn status_client(stream: UnixStream, monitor: &TunnelMonitor) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    loop {
        let mut line = Vec::new();
        let limit = u64::try_from(MAX_LINE + 1).unwrap_or(u64::MAX);
        let read =
            tokio::time::timeout(IDLE, (&mut rd).take(limit).read_until(b'\n', &mut line)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(_)) => {}
        }
        let too_long = line.len() > MAX_LINE;
        let answer = if too_long {
            error_answer(&format!("request longer than {MAX_LINE} bytes"))
        } else if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        } else {
            answer(&line, monitor).await
        };
        let mut out = answer.into_bytes();
        out.push(b'\n');
        match tokio::time::timeout(IDLE, wr.write_all(&out)).await {
            Ok(Ok(())) if !too_long => {}
            _ => return,
        }
    }
}

async fn answer(line: &[u8], monitor: &TunnelMonitor) -> String {
    let request: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => return error_answer(&format!("bad request: {e}")),
    };
    match request {
        Request::Status => match monitor.status().await {
            Ok(status) => match serde_json::to_value(&status) {
                Ok(mut v) => {
                    if let serde_json::Value::Object(m) = &mut v {
                        m.insert("ok".into(), serde_json::Value::Bool(true));
                    }
                    v.to_string()
                }
                Err(e) => error_answer(&e.to_string()),
            },
            Err(e) => error_answer(&ziti_sdk::error_chain(&e).to_string()),
        },
        Request::SetLogLevel { level } => match crate::logging::set_level(&level) {
            Ok(()) => {
                tracing::info!(level = %level.trim(), "log level changed");
                serde_json::json!({"ok": true}).to_string()
            }
            Err(e) => error_answer(&e.to_string()),
        },
    }
}

fn error_answer(error: &str) -> String {
    serde_json::json!({"ok": false, "error": error}).to_string()
}

async fn serve_metrics(listener: TcpListener, monitor: TunnelMonitor) {
    let slots = Arc::new(Semaphore::new(MAX_HTTP));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let _ = stream
                .try_write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            continue;
        };
        let monitor = monitor.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(HTTP_TIMEOUT, http_client(stream, &monitor)).await;
            drop(slot);
        });
    }
}

/// One HTTP request, one answer, then the connection closes.
async fn http_client(mut stream: TcpStream, monitor: &TunnelMonitor) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let (status, body, head_only) = loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                let path = req.path.unwrap_or("/");
                let path = path.split('?').next().unwrap_or(path);
                let method = req.method.unwrap_or("");
                let head_only = method == "HEAD";
                break match (method, path) {
                    ("GET" | "HEAD", "/metrics") => match monitor.status().await {
                        Ok(s) => ("200 OK", s.prometheus(), head_only),
                        Err(e) => (
                            "503 Service Unavailable",
                            format!("{}\n", ziti_sdk::error_chain(&e)),
                            head_only,
                        ),
                    },
                    ("GET" | "HEAD", _) => ("404 Not Found", "see /metrics\n".into(), head_only),
                    _ => ("405 Method Not Allowed", String::new(), false),
                };
            }
            Ok(httparse::Status::Partial) if head.len() <= MAX_HTTP_HEAD => {}
            Ok(httparse::Status::Partial) => {
                break ("431 Request Header Fields Too Large", String::new(), false);
            }
            Err(_) => break ("400 Bad Request", String::new(), false),
        }
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&body);
    }
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
}

/// `zt-tunnel status`.
///
/// With the global `--log-level LEVEL` given on its command line
/// (`zt-tunnel status --log-level debug`), it changes the running tunnel's log level instead.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The status socket of `zt-tunnel run --status-socket`.
    #[arg(long, default_value = "/run/zt-tunnel/ziti0.sock")]
    socket: PathBuf,
    /// Print the tunnel's JSON answer as it came.
    #[arg(long)]
    json: bool,
}

/// Asks a running tunnel for its status and prints it, or sets its log level.
pub async fn status(args: StatusArgs, set_level: Option<&str>) -> anyhow::Result<()> {
    let request = match set_level {
        Some(level) => serde_json::json!({"cmd": "set-log-level", "level": level}),
        None => serde_json::json!({"cmd": "status"}),
    };
    let line = ask(&args.socket, &request.to_string()).await?;
    let answer: serde_json::Value = serde_json::from_str(&line)
        .with_context(|| format!("the tunnel's answer is not JSON: {line}"))?;
    if answer.get("ok") != Some(&serde_json::Value::Bool(true)) {
        let error = answer
            .get("error")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("no reason given");
        bail!("the tunnel refused: {error}");
    }
    if let Some(level) = set_level {
        println!("log level set to {level}");
        return Ok(());
    }
    if args.json {
        println!("{line}");
        return Ok(());
    }
    let status: TunnelStatus =
        serde_json::from_value(answer).context("the tunnel's status does not parse")?;
    print_status(&status);
    Ok(())
}

async fn ask(socket: &Path, request: &str) -> anyhow::Result<String> {
    let stream = tokio::time::timeout(Duration::from_secs(10), UnixStream::connect(socket))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {} timed out", socket.display()))?
        .with_context(|| {
            format!(
                "cannot connect to {} (is `zt-tunnel run --status-socket` running?)",
                socket.display()
            )
        })?;
    let (rd, mut wr) = stream.into_split();
    let exchange = async {
        wr.write_all(format!("{request}\n").as_bytes()).await?;
        let mut line = Vec::new();
        let limit = u64::try_from(MAX_ANSWER).unwrap_or(u64::MAX);
        BufReader::new(rd)
            .take(limit)
            .read_until(b'\n', &mut line)
            .await?;
        Ok::<_, std::io::Error>(line)
    };
    let line = tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {} in 60 s", socket.display()))?
        .with_context(|| format!("talking to {}", socket.display()))?;
    if line.is_empty() {
        bail!("{} closed without answering", socket.display());
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_string())
}

fn print_status(s: &TunnelStatus) {
    println!("{:<24} {:<18} CONTROLLER", "IDENTITY", "AUTH");
    for i in &s.identities {
        println!("{:<24} {:<18} {}", i.name, i.auth, i.controller);
    }
    println!();
    println!(
        "{:<28} {:<16} {:<10} {:<36} HOSTING",
        "SERVICE", "IDENTITY", "ACCESS", "INTERCEPT"
    );
    for v in &s.services {
        let access = match (v.dial, v.bind) {
            (true, true) => "dial,bind",
            (true, false) => "dial",
            (false, true) => "bind",
            (false, false) => "-",
        };
        let intercept = v.intercept.as_ref().map_or("-".to_string(), |i| {
            format!(
                "{} [{}] {}",
                i.addresses.join(","),
                i.ports.join(","),
                i.protocols.join("/")
            )
        });
        let hosting = v.hosting.as_ref().map_or("-".to_string(), |h| {
            format!("{}/{} terminators", h.running, h.terminators)
        });
        println!(
            "{:<28} {:<16} {:<10} {:<36} {}",
            v.name, v.identity, access, intercept, hosting
        );
    }
    println!();
    println!(
        "{:<24} {:<16} {:<32} {:>10} {:>6}",
        "ROUTER", "IDENTITY", "URL", "LATENCY", "CONNS"
    );
    for r in &s.routers {
        let latency = r
            .latency_ms
            .map_or("-".to_string(), |ms| format!("{ms:.1} ms"));
        println!(
            "{:<24} {:<16} {:<32} {:>10} {:>6}",
            r.name, r.identity, r.url, latency, r.connections
        );
    }
    println!();
    println!(
        "{:<22} {:<22} {:<24} {:>12} {:>12}",
        "CLIENT", "INTERCEPTED", "SERVICE", "UP", "DOWN"
    );
    for f in &s.flows {
        let service = match f.established {
            true => f.service.clone(),
            false => format!("{} (dialing)", f.service),
        };
        println!(
            "{:<22} {:<22} {:<24} {:>12} {:>12}",
            f.client.to_string(),
            f.intercepted.to_string(),
            service,
            f.bytes_up,
            f.bytes_down
        );
    }
    let t = &s.totals;
    println!();
    println!(
        "{} TCP flow(s), {} UDP flow(s); {} bytes up, {} bytes down since start",
        t.tcp_flows, t.udp_flows, t.bytes_up, t.bytes_down
    );
    let dials: Vec<String> = DialOutcome::ALL
        .iter()
        .map(|o| format!("{} {}", o.label(), t.dials.get(*o)))
        .collect();
    println!("dials: {}", dials.join(", "));
}
