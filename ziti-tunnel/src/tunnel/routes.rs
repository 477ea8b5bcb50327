//! Intercepted names into the DNS table and intercepted addresses into routes to the TUN.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ziti_sdk::error_chain;

use super::driver::Driver;

impl Driver {
    pub(super) async fn sync_names_and_routes(&mut self) {
        let names = self.table.hostnames();
        if let Err(e) = self.dns_table.set_names(&names) {
            tracing::warn!(error = %error_chain(&e), "cannot update the DNS names");
        }
        let wanted = self.table.ip_routes();
        for (net, prefix) in self.routes.difference(&wanted) {
            if let Err(e) = self
                .netlink
                .remove_route(*net, *prefix, self.if_index)
                .await
            {
                tracing::debug!(error = %error_chain(&e), "route removal");
            }
        }
        let mut installed = BTreeSet::new();
        for (net, prefix) in &wanted {
            if self.is_pool_address(*net, *prefix) {
                continue; // already routed to the TUN by the pool's own prefix
            }
            match self.netlink.route_to(*net, *prefix, self.if_index).await {
                Ok(()) => {
                    installed.insert((*net, *prefix));
                }
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), "cannot route an intercepted address")
                }
            }
        }
        self.routes = installed;
    }

    fn is_pool_address(&self, ip: IpAddr, prefix: u8) -> bool {
        match ip {
            IpAddr::V4(v4) => {
                let pool = self.dns_table.pool();
                prefix >= pool.prefix() && pool.contains(v4)
            }
            IpAddr::V6(v6) => self
                .dns_table
                .ipv6_pool()
                .is_some_and(|pool| prefix >= pool.prefix() && pool.contains(v6)),
        }
    }
}
