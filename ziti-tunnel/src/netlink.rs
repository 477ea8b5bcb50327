//! Links and routes through rtnetlink (never by running `ip`).

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// Errors of netlink calls.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetlinkError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket")]
    Open(#[source] std::io::Error),
    /// The kernel refused a request.
    #[error("cannot {what}")]
    Request {
        /// What was asked.
        what: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// No link with that name.
    #[error("no network interface named {0:?}")]
    NoSuchLink(String),
}

/// A netlink connection (its driver runs on the current tokio runtime).
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a connection in the calling thread's network namespace.
    pub fn connect() -> Result<Self, NetlinkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Open)?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// The index of the link called `name`.
    pub async fn link_index(&self, name: &str) -> Result<u32, NetlinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(link.header.index),
            Ok(None) => Err(NetlinkError::NoSuchLink(name.to_string())),
            Err(source) => Err(NetlinkError::Request {
                what: format!("look up interface {name}"),
                source,
            }),
        }
    }

    /// Sets a link up.
    pub async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|source| NetlinkError::Request {
                what: format!("set interface {index} up"),
                source,
            })
    }

    /// Routes `network/prefix` to the link `index` (replacing an existing route to it).
    pub async fn route_to(
        &self,
        network: IpAddr,
        prefix: u8,
        index: u32,
    ) -> Result<(), NetlinkError> {
        let message = route_message(network, prefix, index);
        self.handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(|source| NetlinkError::Request {
                what: format!("route {network}/{prefix} to interface {index}"),
                source,
            })
    }

    /// Removes the route to `network/prefix` via link `index`.
    pub async fn remove_route(
        &self,
        network: IpAddr,
        prefix: u8,
        index: u32,
    ) -> Result<(), NetlinkError> {
        let message = route_message(network, prefix, index);
        self.handle
            .route()
            .del(message)
            .execute()
            .await
            .map_err(|source| NetlinkError::Request {
                what: format!("remove route {network}/{prefix}"),
                source,
            })
    }
}

/// A route to `network/prefix` through link `index`.
fn route_message(
    network: IpAddr,
    prefix: u8,
    index: u32,
) -> rtnetlink::packet_route::route::RouteMessage {
    match network {
        IpAddr::V4(v4) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(v4, prefix)
            .output_interface(index)
            .build(),
        IpAddr::V6(v6) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .destination_prefix(v6, prefix)
            .output_interface(index)
            .build(),
    }
}
