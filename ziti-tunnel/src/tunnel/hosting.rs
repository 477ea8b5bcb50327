//! Hosting: the services the identities may bind, each terminator of their `host.v1` /
//! `host.v2` config bound on the routers, every dial connected to the server its config and
//! the dialer's app data name ([`crate::host_target`]), over TCP or UDP.
//!
//! A dial is answered only after the server connection is made: a dial that is not allowed or
//! whose server does not answer is rejected at once with the reason (logged with the service
//! and the address), and the dialer sees the failure instead of a connection that closes.
//! Health checks move the terminator's precedence and cost in place ([`crate::health`]).
//!
//! A tunnel in another network namespace connects to the hosted servers (and runs the port
//! checks) from inside that namespace, as a tunneler running there would: `127.0.0.1` is the
//! namespace's own loopback.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use ziti_sdk::edge::Precedence as EdgePrecedence;
use ziti_sdk::router::IncomingDial;
use ziti_sdk::services::{HostV1, Precedence, Protocol};
use ziti_sdk::{Service, ZitiContext, ZitiListener, error_chain};

use super::hosted_tcp;
use super::netns::NetnsThread;
use crate::app_data::AppData;
use crate::health::{CheckRules, Effect, TerminatorHealth};
use crate::host_target::{HostTarget, check_config, resolve};

/// A hosted UDP flow ends after this long without a datagram either way.
const UDP_IDLE: Duration = Duration::from_secs(60);
/// Dials of one terminator waiting for their server connection at once at most.
const MAX_CONNECTING: usize = 256;
/// Largest datagram relayed.
pub(super) const UDP_MAX: usize = 65_535;

/// The hosted services: one listener task per (identity, service, terminator).
pub(super) struct Hosting {
    tasks: HashMap<(usize, String), HostedService>,
    /// Where connections to the hosted servers are made; `None`: the caller's namespace.
    netns: Option<NetnsThread>,
}

/// The terminators a service is hosted with and their listener tasks.
type HostedService = (Vec<HostV1>, Vec<JoinHandle<()>>);

impl Hosting {
    pub(super) fn new(netns: Option<NetnsThread>) -> Self {
        Hosting {
            tasks: HashMap::new(),
            netns,
        }
    }

    /// Services hosted, one per (identity, service).
    pub(super) fn len(&self) -> usize {
        self.tasks.len()
    }

    /// How service `service` of identity `index` is hosted, if it is.
    pub(super) fn state(&self, index: usize, service: &str) -> Option<super::HostingStatus> {
        let (terminators, handles) = self.tasks.get(&(index, service.to_string()))?;
        Some(super::HostingStatus {
            terminators: terminators.len(),
            running: handles.iter().filter(|h| !h.is_finished()).count(),
        })
    }

    pub(super) fn apply(&mut self, ctx: ZitiContext, index: usize, service: &Service) {
        let terminators = if service.permissions.bind {
            service.configs.host_terminators()
        } else {
            Vec::new()
        };
        let key = (index, service.name.clone());
        if let Some((current, _)) = self.tasks.get(&key)
            && *current == terminators
        {
            return;
        }
        self.stop(index, &service.name);
        if terminators.is_empty() {
            return;
        }
        let handles = terminators
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                if let Err(e) = check_config(t) {
                    tracing::warn!(service = %service.name, terminator = i, error = %e, "not hosting this terminator");
                    return None;
                }
                Some(tokio::spawn(host_terminator(
                    ctx.clone(),
                    service.name.clone(),
                    t.clone(),
                    self.netns.clone(),
                )))
            })
            .collect();
        self.tasks.insert(key, (terminators, handles));
    }

    pub(super) fn stop(&mut self, index: usize, service: &str) {
        if let Some((_, handles)) = self.tasks.remove(&(index, service.to_string())) {
            for h in handles {
                h.abort();
            }
        }
    }

    /// Stops hosting every service of identity `index`.
    pub(super) fn stop_identity(&mut self, index: usize) {
        self.tasks.retain(|(i, _), (_, handles)| {
            if *i == index {
                handles.iter().for_each(JoinHandle::abort);
            }
            *i != index
        });
    }

    pub(super) fn stop_all(&mut self) {
        for (_, (_, handles)) in self.tasks.drain() {
            for h in handles {
                h.abort();
            }
        }
    }
}

fn edge_precedence(p: Precedence) -> EdgePrecedence {
    match p {
        Precedence::Default => EdgePrecedence::Default,
        Precedence::Required => EdgePrecedence::Required,
        Precedence::Failed => EdgePrecedence::Failed,
    }
}

/// The terminator identity: `bindUsingEdgeIdentity` names it after the hosting identity,
/// `identity` may use `$tunneler_id.name`.
async fn terminator_identity(ctx: &ZitiContext, t: &HostV1) -> Option<String> {
    let lo = t.listen_options.as_ref()?;
    let wants_name = lo.bind_using_edge_identity
        || lo
            .identity
            .as_deref()
            .is_some_and(|i| i.contains("$tunneler_id.name"));
    let name = if wants_name {
        match ctx.controller().current_identity().await {
            Ok(me) => Some(me.name),
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "cannot learn this identity's name for the terminator identity");
                None
            }
        }
    } else {
        None
    };
    if lo.bind_using_edge_identity {
        return name;
    }
    let template = lo.identity.as_deref().filter(|i| !i.is_empty())?;
    Some(template.replace("$tunneler_id.name", name.as_deref().unwrap_or("")))
}

/// Hosts one terminator until aborted: binds, runs its health checks, serves its dials.
async fn host_terminator(ctx: ZitiContext, service: String, t: HostV1, netns: Option<NetnsThread>) {
    let lo = t.listen_options_or_default();
    let opts = ziti_sdk::context::ListenOptions {
        cost: lo.cost,
        precedence: edge_precedence(lo.precedence),
        identity: terminator_identity(&ctx, &t).await,
        max_terminators: usize::try_from(lo.max_connections).ok(),
    };
    let mut listener = match ctx.listen_with(&service, &opts).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(service, error = %error_chain(&e), "cannot host service");
            return;
        }
    };
    let what = describe(&t);
    tracing::info!(service, target = %what, "hosting");
    let (health_tasks, mut health_rx) =
        match spawn_health_checks(&service, &t, netns.clone(), (lo.cost, opts.precedence)) {
            Some((tasks, rx)) => (tasks, Some(rx)),
            None => (Vec::new(), None),
        };
    let connect_timeout = lo.effective_connect_timeout();
    let config = std::sync::Arc::new(t);
    let connecting = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTING));
    loop {
        let health_change = async {
            match health_rx.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        let dial = tokio::select! {
            d = listener.next_dial() => d,
            Some(change) = health_change => {
                apply_health(&listener, &service, change);
                continue;
            }
        };
        let Some(dial) = dial else {
            break;
        };
        // Dials waiting for their server are bounded: a flood is refused, not queued.
        let Ok(permit) = connecting.clone().try_acquire_owned() else {
            tracing::warn!(
                service,
                "too many dials waiting for the hosted server; refusing one"
            );
            dial.reject("host is too busy").await;
            continue;
        };
        tokio::spawn(serve_dial(
            dial,
            service.clone(),
            config.clone(),
            connect_timeout,
            netns.clone(),
            permit,
        ));
    }
    health_tasks.iter().for_each(JoinHandle::abort);
    tracing::info!(service, "hosting ended");
}

fn apply_health(listener: &ZitiListener, service: &str, (cost, precedence): (u16, EdgePrecedence)) {
    tracing::info!(
        service,
        cost,
        ?precedence,
        "health checks changed the terminator"
    );
    listener.update_terminators(cost, precedence);
}

/// What a terminator connects to, for logs.
fn describe(t: &HostV1) -> String {
    let proto = if t.forward_protocol {
        "(forwarded protocol)".to_string()
    } else {
        t.protocol
            .map(crate::app_data::protocol_name)
            .unwrap_or("?")
            .to_string()
    };
    let addr = if t.forward_address {
        "(forwarded address)".to_string()
    } else {
        t.address.clone().unwrap_or_default()
    };
    let port = if t.forward_port {
        "(forwarded port)".to_string()
    } else {
        t.port.map(|p| p.to_string()).unwrap_or_default()
    };
    format!("{proto}:{addr}:{port}")
}

/// Starts the terminator's checks; each sends the terminator's new (cost, precedence) when
/// its results change them.
#[allow(clippy::type_complexity)]
fn spawn_health_checks(
    service: &str,
    t: &HostV1,
    netns: Option<NetnsThread>,
    (cost, precedence): (u16, EdgePrecedence),
) -> Option<(Vec<JoinHandle<()>>, mpsc::Receiver<(u16, EdgePrecedence)>)> {
    if t.port_checks.is_empty() && t.http_checks.is_empty() {
        return None;
    }
    let (tx, rx) = mpsc::channel(8);
    let state = std::sync::Arc::new(std::sync::Mutex::new(TerminatorHealth::new(
        cost, precedence,
    )));
    let mut tasks = Vec::new();
    let checks = t
        .port_checks
        .iter()
        .map(|c| {
            (
                Check::Port(c.address.clone()),
                c.interval,
                c.timeout,
                c.actions.clone(),
            )
        })
        .chain(t.http_checks.iter().map(|c| {
            (
                Check::Http {
                    url: c.url.clone(),
                    method: c.method.clone().unwrap_or_else(|| "GET".into()),
                    body: c.body.clone(),
                    expect_status: c.expect_status.unwrap_or(200),
                    expect_in_body: c.expect_in_body.clone(),
                },
                c.interval,
                c.timeout,
                c.actions.clone(),
            )
        }));
    for (check, interval, timeout, actions) in checks {
        let rules = match CheckRules::new(&actions) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(service, error = %e, "health check not run");
                continue;
            }
        };
        tasks.push(tokio::spawn(run_check(
            service.to_string(),
            check,
            interval.max(Duration::from_millis(100)),
            timeout,
            rules,
            state.clone(),
            tx.clone(),
            netns.clone(),
        )));
    }
    Some((tasks, rx))
}

/// One health check.
#[derive(Debug, Clone)]
enum Check {
    /// A TCP connect to `host:port`.
    Port(String),
    /// An HTTP request.
    Http {
        url: String,
        method: String,
        body: Option<String>,
        expect_status: u16,
        expect_in_body: Option<String>,
    },
}

#[allow(clippy::too_many_arguments)]
async fn run_check(
    service: String,
    check: Check,
    interval: Duration,
    timeout: Duration,
    mut rules: CheckRules,
    state: std::sync::Arc<std::sync::Mutex<TerminatorHealth>>,
    changes: mpsc::Sender<(u16, EdgePrecedence)>,
    netns: Option<NetnsThread>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<bool> = None;
    loop {
        ticker.tick().await;
        let outcome = tokio::time::timeout(timeout, probe(&check, netns.as_ref()))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
        let healthy = outcome.is_ok();
        if last != Some(healthy) {
            match &outcome {
                Ok(()) => tracing::info!(service, check = ?check, "health check passes"),
                Err(why) => {
                    tracing::warn!(service, check = ?check, reason = %why, "health check fails")
                }
            }
            last = Some(healthy);
        }
        let effects = rules.record(Instant::now(), healthy);
        if effects.contains(&Effect::SendEvent) {
            tracing::info!(service, healthy, "health event");
        }
        let change = state.lock().map(|mut s| s.apply(&effects)).unwrap_or(None);
        if let Some(change) = change
            && changes.send(change).await.is_err()
        {
            return;
        }
    }
}

async fn probe(check: &Check, netns: Option<&NetnsThread>) -> Result<(), String> {
    match check {
        Check::Port(address) => {
            let (host, port) =
                split_host_port(address).ok_or_else(|| format!("{address:?} is not host:port"))?;
            connect_tcp(&(host, port), netns)
                .await
                .map(drop)
                .map_err(|e| error_chain(&e).to_string())
        }
        Check::Http {
            url,
            method,
            body,
            expect_status,
            expect_in_body,
        } => {
            let (status, text) = http_request(url, method, body.as_deref(), netns).await?;
            if status != *expect_status {
                return Err(format!("status {status}, expected {expect_status}"));
            }
            if let Some(want) = expect_in_body
                && !text.contains(want.as_str())
            {
                return Err(format!("the body does not contain {want:?}"));
            }
            Ok(())
        }
    }
}

/// Largest HTTP answer a health check reads.
const HTTP_CHECK_MAX: usize = 64 * 1024;

/// One plain-HTTP request over a TCP connection made where the hosted servers are reached
/// (inside the tunnel's namespace, if it has one): the status and the body as text.
async fn http_request(
    url: &str,
    method: &str,
    body: Option<&str>,
    netns: Option<&NetnsThread>,
) -> Result<(u16, String), String> {
    let url = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if url.scheme() != "http" {
        return Err(format!(
            "{} health checks are not supported (use http:// or a port check)",
            url.scheme()
        ));
    }
    let host = url.host_str().ok_or("the URL has no host")?.to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    let mut tcp = connect_tcp(&(host.clone(), port), netns)
        .await
        .map_err(|e| error_chain(&e).to_string())?;
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: zt-tunnel-health\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    (&mut tcp)
        .take(HTTP_CHECK_MAX as u64)
        .read_to_end(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(&answer) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("incomplete HTTP answer".into()),
        Err(e) => return Err(format!("not an HTTP answer: {e}")),
    };
    let status = response.code.unwrap_or(0);
    let text = String::from_utf8_lossy(answer.get(head..).unwrap_or_default()).into_owned();
    Ok((status, text))
}

fn split_host_port(s: &str) -> Option<(String, u16)> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some((a.ip().to_string(), a.port()));
    }
    let (host, port) = s.rsplit_once(':')?;
    Some((
        host.trim_matches(['[', ']']).to_string(),
        port.parse().ok()?,
    ))
}

/// Serves one dial: decides its target, connects, and only then answers it.
async fn serve_dial(
    dial: IncomingDial,
    service: String,
    t: std::sync::Arc<HostV1>,
    connect_timeout: Duration,
    netns: Option<NetnsThread>,
    connecting: tokio::sync::OwnedSemaphorePermit,
) {
    let app = match dial.peer().app_data.as_deref().map(AppData::parse) {
        None => AppData::default(),
        Some(Ok(a)) => a,
        Some(Err(e)) => {
            tracing::warn!(service, error = %error_chain(&e), "ignoring the dial's app data");
            AppData::default()
        }
    };
    let target = match resolve(&t, &app) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(service, reason = %e, "refusing a dial");
            dial.reject(&e.to_string()).await;
            return;
        }
    };
    let backend = tokio::time::timeout(connect_timeout, connect(&target, netns.as_ref()))
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {connect_timeout:?}"),
            ))
        });
    let backend = match backend {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(service, target = %target, error = %error_chain(&e), "cannot reach the hosted server");
            dial.reject(&format!("cannot reach {target}: {e}")).await;
            return;
        }
    };
    drop(connecting);
    let stream = match dial.accept_now() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(service, error = %error_chain(&e), "accepting a dial failed");
            return;
        }
    };
    tracing::debug!(service, target = %target, "hosted connection");
    match backend {
        Backend::Tcp(tcp) => {
            let (from_ziti, to_ziti) = stream.into_split();
            if let Err(e) = hosted_tcp::relay(from_ziti, to_ziti, tcp).await {
                tracing::debug!(service, error = %error_chain(&e), "hosted connection ended with an error");
            }
        }
        Backend::Udp(udp) => relay_datagrams(stream, udp).await,
    }
}

enum Backend {
    Tcp(tokio::net::TcpStream),
    Udp(tokio::net::UdpSocket),
}

async fn connect(target: &HostTarget, netns: Option<&NetnsThread>) -> std::io::Result<Backend> {
    let host = (target.address.clone(), target.port);
    match target.protocol {
        Protocol::Tcp => {
            let tcp = connect_tcp(&host, netns).await?;
            let _ = tcp.set_nodelay(true);
            Ok(Backend::Tcp(tcp))
        }
        Protocol::Udp => Ok(Backend::Udp(connect_udp(&host, netns).await?)),
    }
}

/// Each edge message is one datagram, both ways, until either side ends or both are idle for
/// [`UDP_IDLE`].
async fn relay_datagrams(stream: ziti_sdk::EdgeStream, udp: tokio::net::UdpSocket) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut up = vec![0u8; UDP_MAX];
    let mut down = vec![0u8; UDP_MAX];
    loop {
        tokio::select! {
            r = rd.read(&mut up) => match r {
                Ok(n) if n > 0 => {
                    if udp.send(&up[..n]).await.is_err() {
                        break;
                    }
                }
                _ => break,
            },
            r = udp.recv(&mut down) => match r {
                Ok(n) => {
                    if wr.write_all(&down[..n]).await.is_err() {
                        break;
                    }
                }
                Err(_) => break,
            },
            () = tokio::time::sleep(UDP_IDLE) => break,
        }
    }
    let _ = wr.shutdown().await;
}

/// Connects to the hosted server `target`, from inside `netns` if given. A hostname is resolved
/// in the caller's namespace; each of its addresses is tried in turn.
async fn connect_tcp(
    target: &(String, u16),
    netns: Option<&NetnsThread>,
) -> std::io::Result<tokio::net::TcpStream> {
    let Some(netns) = netns else {
        return tokio::net::TcpStream::connect(target).await;
    };
    let mut last = None;
    for addr in tokio::net::lookup_host(target).await? {
        match netns.tcp_socket(addr).await {
            Ok(socket) => match socket.connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            },
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| no_address(&target.0)))
}

/// A UDP socket connected to the hosted server, made inside `netns` if given.
async fn connect_udp(
    target: &(String, u16),
    netns: Option<&NetnsThread>,
) -> std::io::Result<tokio::net::UdpSocket> {
    let addr = tokio::net::lookup_host(target)
        .await?
        .next()
        .ok_or_else(|| no_address(&target.0))?;
    let socket = match netns {
        None => {
            let any: SocketAddr = if addr.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            tokio::net::UdpSocket::bind(any).await?
        }
        Some(netns) => tokio::net::UdpSocket::from_std(netns.udp_socket(addr).await?)?,
    };
    socket.connect(addr).await?;
    Ok(socket)
}

fn no_address(host: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{host} has no address"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("127.0.0.1:80"),
            Some(("127.0.0.1".into(), 80))
        );
        assert_eq!(split_host_port("[::1]:80"), Some(("::1".into(), 80)));
        assert_eq!(
            split_host_port("db.corp:5432"),
            Some(("db.corp".into(), 5432))
        );
        assert_eq!(split_host_port("db.corp"), None);
    }

    #[test]
    fn descriptions_name_fixed_and_forwarded_parts() {
        let t: HostV1 = serde_json::from_str(
            r#"{"protocol":"tcp","forwardAddress":true,"allowedAddresses":["10.0.0.0/8"],"port":80}"#,
        )
        .unwrap();
        assert_eq!(describe(&t), "tcp:(forwarded address):80");
    }
}
