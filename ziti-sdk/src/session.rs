//! Dial/Bind sessions, edge-router lists and terminators (edge-client-api.md §5).

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use serde::Deserialize;
use serde_json::Value;

use crate::controller::{Controller, ControllerError};

/// What a session is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionType {
    /// Connect to a service.
    Dial,
    /// Host a service.
    Bind,
}

impl SessionType {
    /// The API spelling (`Dial`/`Bind`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dial => "Dial",
            Self::Bind => "Bind",
        }
    }
}

/// The authenticated identity as the controller describes it (`GET /current-identity`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct CurrentIdentity {
    /// Identity id (also the certificate's common name).
    pub id: String,
    /// The name an administrator gave it (`ziti edge create identity NAME`).
    pub name: String,
    /// Terminator precedence for services it hosts, unless a config says otherwise.
    #[serde(default)]
    pub default_hosting_precedence: Option<String>,
    /// Terminator cost for services it hosts, unless a config says otherwise.
    #[serde(default)]
    pub default_hosting_cost: Option<u16>,
}

/// An edge router an identity may use.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeRouter {
    /// Router id (absent in session answers).
    #[serde(default)]
    pub id: Option<String>,
    /// Router name.
    pub name: String,
    /// Advertised host name.
    #[serde(default)]
    pub hostname: String,
    /// Edge listener URLs (`tls://host:port`, maybe `ws://`/`wss://`), `tls` first.
    #[serde(
        default,
        deserialize_with = "urls_from_map",
        rename = "supportedProtocols"
    )]
    pub urls: Vec<String>,
    /// Whether the controller sees it online.
    #[serde(default)]
    pub is_online: Option<bool>,
    /// Routing cost.
    #[serde(default)]
    pub cost: Option<u32>,
    /// Disabled by the administrator.
    #[serde(default)]
    pub disabled: Option<bool>,
}

impl EdgeRouter {
    /// The `tls://` URL, if the router has one.
    pub fn tls_url(&self) -> Option<&str> {
        self.urls
            .iter()
            .find(|u| u.starts_with("tls://"))
            .map(String::as_str)
    }
}

fn urls_from_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let map = Option::<HashMap<String, String>>::deserialize(d)?.unwrap_or_default();
    let mut v: Vec<(String, String)> = map.into_iter().collect();
    // tls first, then by name, so the choice is deterministic.
    v.sort_by(|a, b| (a.0 != "tls", &a.0).cmp(&(b.0 != "tls", &b.0)));
    Ok(v.into_iter().map(|(_, url)| url).collect())
}

/// A service session: its token authorises Dial/Bind at the listed routers.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// Session id.
    pub id: String,
    /// Session token (a JWT on 2.x controllers). Never log it.
    pub token: String,
    /// The service.
    #[serde(default)]
    pub service_id: String,
    /// Routers that may be used.
    #[serde(default)]
    pub edge_routers: Vec<EdgeRouter>,
    #[serde(rename = "type", default)]
    kind: String,
}

impl Session {
    /// Dial or Bind.
    pub fn session_type(&self) -> SessionType {
        if self.kind.eq_ignore_ascii_case("bind") {
            SessionType::Bind
        } else {
            SessionType::Dial
        }
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("token", &"<redacted>")
            .field("service_id", &self.service_id)
            .field("type", &self.kind)
            .field("edge_routers", &self.edge_routers)
            .finish()
    }
}

/// A terminator of a service (which hosting identities are present).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Terminator {
    /// Terminator id.
    pub id: String,
    /// Service id.
    #[serde(default)]
    pub service_id: String,
    /// Router the terminator lives on.
    #[serde(default)]
    pub router_id: String,
    /// Addressable identity (`dialOptions.identity`), may be empty.
    #[serde(default)]
    pub identity: String,
}

/// Per-(service, type) session cache.
#[derive(Default)]
pub(crate) struct SessionCache {
    map: Mutex<HashMap<(String, SessionType), Session>>,
}

/// Upper bound of cached sessions (one per service and type, so this is generous).
const MAX_CACHED: usize = 4096;

impl SessionCache {
    fn get(&self, key: &(String, SessionType)) -> Option<Session> {
        self.map.lock().ok()?.get(key).cloned()
    }
    fn put(&self, key: (String, SessionType), s: Session) {
        if let Ok(mut m) = self.map.lock() {
            if m.len() >= MAX_CACHED {
                m.clear();
            }
            m.insert(key, s);
        }
    }
    fn remove(&self, key: &(String, SessionType)) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(key);
        }
    }
    pub(crate) fn clear(&self) {
        if let Ok(mut m) = self.map.lock() {
            m.clear();
        }
    }
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, v: Value) -> Result<T, ControllerError> {
    serde_json::from_value(v).map_err(|source| ControllerError::Decode {
        what: what.to_string(),
        source,
    })
}

impl Controller {
    /// `POST /sessions`: a new Dial or Bind session (not cached).
    pub async fn create_session(
        &self,
        service_id: &str,
        session_type: SessionType,
    ) -> Result<Session, ControllerError> {
        let body = serde_json::json!({"serviceId": service_id, "type": session_type.as_str()});
        let data: Value = self.post_data("sessions", &body).await?;
        let s: Session = decode("session", data)?;
        self.session_cache()
            .put((service_id.to_string(), session_type), s.clone());
        Ok(s)
    }

    /// The cached session for (service, type), creating one when there is none.
    pub async fn session(
        &self,
        service_id: &str,
        session_type: SessionType,
    ) -> Result<Session, ControllerError> {
        match self
            .session_cache()
            .get(&(service_id.to_string(), session_type))
        {
            Some(s) => Ok(s),
            None => self.create_session(service_id, session_type).await,
        }
    }

    /// Forgets a cached session (call when a router rejects its token or the service changes).
    pub fn invalidate_session(&self, service_id: &str, session_type: SessionType) {
        self.session_cache()
            .remove(&(service_id.to_string(), session_type));
    }

    /// `GET /current-identity`: who the controller knows this identity as.
    pub async fn current_identity(&self) -> Result<CurrentIdentity, ControllerError> {
        let (data, _): (CurrentIdentity, _) = self.get_data("current-identity").await?;
        Ok(data)
    }

    /// `GET /current-identity/edge-routers`: every router this identity may use.
    pub async fn current_identity_edge_routers(&self) -> Result<Vec<EdgeRouter>, ControllerError> {
        let items = self
            .get_all_pages("current-identity/edge-routers", &[])
            .await?;
        items
            .into_iter()
            .map(|v| decode("edge router", v))
            .collect()
    }

    /// `GET /services/{id}/edge-routers`: routers usable for one service (no session needed).
    pub async fn service_edge_routers(
        &self,
        service_id: &str,
    ) -> Result<Vec<EdgeRouter>, ControllerError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Data {
            #[serde(default)]
            edge_routers: Vec<EdgeRouter>,
        }
        let rel = format!("services/{}/edge-routers", path_segment(service_id));
        let (data, _): (Data, _) = self.get_data(&rel).await?;
        Ok(data.edge_routers)
    }

    /// `GET /services/{id}/terminators`.
    pub async fn terminators(&self, service_id: &str) -> Result<Vec<Terminator>, ControllerError> {
        let rel = format!("services/{}/terminators", path_segment(service_id));
        let items = self.get_all_pages(&rel, &[]).await?;
        items.into_iter().map(|v| decode("terminator", v)).collect()
    }
}

/// Percent-encodes an id for use as one path segment.
pub(crate) fn path_segment(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_session_answer() {
        let v = serde_json::json!({"id":"s1","token":"eyJ.secret.sig","serviceId":"svc","type":"Bind",
            "apiSessionId":"a","edgeRouters":[{"name":"r1","hostname":"127.0.0.1",
            "supportedProtocols":{"wss":"wss://127.0.0.1:3023","tls":"tls://127.0.0.1:3022"},
            "urls":{"tls":"tls://127.0.0.1:3022"},"isOnline":true,"cost":0,"noTraversal":false}]});
        let s: Session = serde_json::from_value(v).unwrap();
        assert_eq!(s.session_type(), SessionType::Bind);
        assert_eq!(s.edge_routers.len(), 1);
        assert_eq!(
            s.edge_routers[0].urls,
            ["tls://127.0.0.1:3022", "wss://127.0.0.1:3023"]
        );
        assert_eq!(s.edge_routers[0].tls_url(), Some("tls://127.0.0.1:3022"));
        assert!(!format!("{s:?}").contains("secret"));
    }

    #[test]
    fn cache_put_get_remove() {
        let c = SessionCache::default();
        let s: Session = serde_json::from_value(serde_json::json!({"id":"1","token":"t"})).unwrap();
        let key = ("svc".to_string(), SessionType::Dial);
        c.put(key.clone(), s.clone());
        assert_eq!(c.get(&key), Some(s));
        assert_eq!(c.get(&("svc".to_string(), SessionType::Bind)), None);
        c.remove(&key);
        assert_eq!(c.get(&key), None);
    }

    #[test]
    fn ids_are_escaped_in_paths() {
        assert_eq!(path_segment("a/b?c"), "a%2Fb%3Fc");
        assert_eq!(path_segment("3Xk9-Zq"), "3Xk9-Zq");
    }
}
