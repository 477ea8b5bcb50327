//! Which controller to talk to: the identity's Client API URLs first, then the members an HA
//! cluster reports (`GET /controllers`), one of them current. Pure bookkeeping; the controller
//! shell asks it where to send a request and tells it when a member failed.

use serde::Deserialize;
use url::Url;

use crate::identity::normalize_api_url;

/// The controllers a client may use, in the order they are tried, and the one in use.
#[derive(Debug, Clone)]
pub(crate) struct Endpoints {
    urls: Vec<Url>,
    current: Url,
}

impl Endpoints {
    /// `urls` in order (duplicates dropped), `current` being the one that answered first.
    pub(crate) fn new(urls: &[Url], current: &Url) -> Self {
        let mut e = Self {
            urls: Vec::with_capacity(urls.len().max(1)),
            current: current.clone(),
        };
        for u in urls.iter().chain(std::iter::once(current)) {
            e.add(u);
        }
        e
    }

    fn position(&self, url: &Url) -> Option<usize> {
        self.urls.iter().position(|u| same_api(u, url))
    }

    fn add(&mut self, url: &Url) -> bool {
        if self.position(url).is_some() {
            return false;
        }
        self.urls.push(url.clone());
        true
    }

    /// The Client API URL in use.
    pub(crate) fn current(&self) -> &Url {
        &self.current
    }

    /// Every known Client API URL, in trial order.
    pub(crate) fn all(&self) -> &[Url] {
        &self.urls
    }

    /// How many controllers are known.
    pub(crate) fn len(&self) -> usize {
        self.urls.len()
    }

    /// `failed` did not answer: if it is still the current one, the next one becomes current and
    /// is returned. `None` when someone else already moved on (or there is no other).
    pub(crate) fn fail_over(&mut self, failed: &Url) -> Option<Url> {
        if self.urls.len() < 2 || !same_api(&self.current, failed) {
            return None;
        }
        let at = self.position(&self.current).unwrap_or(0);
        let next = self.urls.iter().cycle().nth(at + 1)?.clone();
        self.current = next.clone();
        Some(next)
    }

    /// Adds the members a cluster listing names; `true` when any was new. The current one stays
    /// current.
    pub(crate) fn learn(&mut self, members: &[Url]) -> bool {
        let mut changed = false;
        for m in members {
            changed |= self.add(m);
        }
        changed
    }
}

/// Same controller API: scheme, host, port and path (a trailing slash does not matter).
fn same_api(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
        && a.path().trim_end_matches('/') == b.path().trim_end_matches('/')
}

/// One item of `GET /controllers` (only what we use).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClusterMember {
    #[serde(default)]
    name: String,
    #[serde(default)]
    api_addresses: std::collections::HashMap<String, Vec<ApiAddress>>,
}

#[derive(Debug, Deserialize)]
struct ApiAddress {
    #[serde(default)]
    url: String,
}

/// The Client API URLs in a `GET /controllers` `data` array (invalid entries skipped, with
/// their member's name logged at debug).
pub(crate) fn cluster_client_urls(data: &serde_json::Value) -> Vec<Url> {
    let Ok(members) = serde_json::from_value::<Vec<ClusterMember>>(data.clone()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for m in members {
        for a in m.api_addresses.get("edge-client").into_iter().flatten() {
            match normalize_api_url(&a.url) {
                Ok(u) => out.push(u),
                Err(e) => {
                    tracing::debug!(member = %m.name, url = %a.url, error = %e, "ignoring a cluster member's address")
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn fails_over_in_order_and_only_once_per_failure() {
        let a = u("https://a:1/edge/client/v1");
        let b = u("https://b:1/edge/client/v1");
        let c = u("https://c:1/edge/client/v1");
        let mut e = Endpoints::new(&[a.clone(), b.clone(), c.clone()], &a);
        assert_eq!(e.current(), &a);
        assert_eq!(e.fail_over(&a), Some(b.clone()));
        // A second report of the same failure (another request in flight) does not skip b.
        assert_eq!(e.fail_over(&a), None);
        assert_eq!(e.current(), &b);
        assert_eq!(e.fail_over(&b), Some(c.clone()));
        assert_eq!(e.fail_over(&c), Some(a.clone()));
    }

    #[test]
    fn a_single_controller_never_fails_over() {
        let a = u("https://a:1/edge/client/v1");
        let mut e = Endpoints::new(std::slice::from_ref(&a), &a);
        assert_eq!(e.fail_over(&a), None);
        assert_eq!(e.current(), &a);
    }

    #[test]
    fn learns_cluster_members_without_duplicates_and_keeps_current() {
        let a = u("https://a:1/edge/client/v1");
        let mut e = Endpoints::new(std::slice::from_ref(&a), &a);
        let data = serde_json::json!([
            {"name": "c1", "apiAddresses": {"edge-client": [{"url": "https://a:1/edge/client/v1/", "version": "v1"}],
                                            "edge-oidc": [{"url": "https://a:1/oidc", "version": "v1"}]}},
            {"name": "c2", "apiAddresses": {"edge-client": [{"url": "https://b:1/edge/client/v1", "version": "v1"}]}},
            {"name": "c3", "apiAddresses": {"edge-client": [{"url": "not a url"}]}},
            {"name": "c4"}
        ]);
        let learned = cluster_client_urls(&data);
        assert_eq!(learned.len(), 2);
        assert!(e.learn(&learned));
        assert!(!e.learn(&learned));
        assert_eq!(e.len(), 2);
        assert_eq!(e.current(), &a);
        assert_eq!(e.all()[1].as_str(), "https://b:1/edge/client/v1");
    }

    #[test]
    fn cluster_listing_of_the_wrong_shape_yields_nothing() {
        assert!(cluster_client_urls(&serde_json::json!({"x": 1})).is_empty());
        assert!(cluster_client_urls(&serde_json::json!(null)).is_empty());
    }
}
