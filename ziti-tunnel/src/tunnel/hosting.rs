//! Hosting: services the identities may bind, forwarded to their configured TCP address.
//!
//! A tunnel in another network namespace connects to the hosted servers from inside that
//! namespace, as a tunneler running there would: `127.0.0.1` is the namespace's own loopback.

use std::collections::HashMap;
use std::net::SocketAddr;

use tokio::task::JoinHandle;
use ziti_sdk::services::{HostV1, Precedence, Protocol};
use ziti_sdk::{Service, ZitiContext, error_chain};

use super::netns::NetnsThread;

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
            .filter_map(|t| {
                let target = host_target(t);
                if target.is_none() {
                    tracing::warn!(service = %service.name, "host config needs a fixed tcp address and port; not hosting it");
                }
                let (addr, port) = target?;
                Some(tokio::spawn(host_service(
                    ctx.clone(),
                    service.name.clone(),
                    t.clone(),
                    (addr, port),
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

/// The fixed TCP target of a terminator, if it has one.
fn host_target(t: &HostV1) -> Option<(String, u16)> {
    let tcp = matches!(t.protocol, Some(Protocol::Tcp) | None) && !t.forward_protocol;
    if !tcp || t.forward_address || t.forward_port {
        return None;
    }
    Some((t.address.clone()?, t.port?))
}

async fn host_service(
    ctx: ZitiContext,
    service: String,
    t: HostV1,
    (addr, port): (String, u16),
    netns: Option<NetnsThread>,
) {
    let lo = t.listen_options_or_default();
    let opts = ziti_sdk::context::ListenOptions {
        cost: lo.cost,
        precedence: match lo.precedence {
            Precedence::Default => ziti_sdk::edge::Precedence::Default,
            Precedence::Required => ziti_sdk::edge::Precedence::Required,
            Precedence::Failed => ziti_sdk::edge::Precedence::Failed,
        },
        identity: lo.identity.clone().filter(|i| !i.is_empty()),
    };
    let mut listener = match ctx.listen_with(&service, &opts).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(service, error = %error_chain(&e), "cannot host service");
            return;
        }
    };
    tracing::info!(service, target = %format!("{addr}:{port}"), "hosting");
    while let Some(mut stream) = listener.accept().await {
        let target = (addr.clone(), port);
        let service = service.clone();
        let netns = netns.clone();
        tokio::spawn(async move {
            match connect(&target, netns.as_ref()).await {
                Ok(mut tcp) => {
                    let _ = tcp.set_nodelay(true);
                    if let Err(e) = tokio::io::copy_bidirectional(&mut stream, &mut tcp).await {
                        tracing::debug!(service, error = %error_chain(&e), "hosted connection ended with an error");
                    }
                }
                Err(e) => {
                    tracing::warn!(service, target = %format!("{}:{}", target.0, target.1), error = %error_chain(&e), "cannot reach the hosted server");
                }
            }
        });
    }
}

/// Connects to the hosted server `target`, from inside `netns` if given. A hostname is resolved
/// in the caller's namespace; each of its addresses is tried in turn.
async fn connect(
    target: &(String, u16),
    netns: Option<&NetnsThread>,
) -> std::io::Result<tokio::net::TcpStream> {
    let Some(netns) = netns else {
        return tokio::net::TcpStream::connect(target).await;
    };
    let mut last = None;
    for addr in tokio::net::lookup_host(target).await? {
        match connect_in(netns, addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} has no address", target.0),
        )
    }))
}

async fn connect_in(
    netns: &NetnsThread,
    addr: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = netns.tcp_socket(addr).await?;
    socket.connect(addr).await
}
