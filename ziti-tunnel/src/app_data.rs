//! What an intercepting tunneler tells the hosting one about a flow: the dial's app data.
//!
//! A JSON object of strings, as the Go and C tunnelers send it: `dst_protocol`, `dst_ip`,
//! `dst_port`, `dst_hostname` (when the destination was a name the DNS server gave out),
//! `src_protocol`, `src_ip`, `src_port`, and `source_addr` (the intercept's `sourceIp`
//! template filled in). A host whose config forwards the protocol, address or port
//! (`forwardProtocol`, ...) reads them back. Pure: no sockets, no clock.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use ziti_sdk::services::Protocol;

/// App data keys, as the Go tunneler (`tunnel/const.go`) and the C one name them.
pub mod key {
    /// `tcp` or `udp`.
    pub const DST_PROTOCOL: &str = "dst_protocol";
    /// The intercepted destination IP.
    pub const DST_IP: &str = "dst_ip";
    /// The intercepted destination port (decimal string).
    pub const DST_PORT: &str = "dst_port";
    /// The hostname the destination IP was given out for, if any.
    pub const DST_HOSTNAME: &str = "dst_hostname";
    /// `tcp` or `udp` (the C tunneler's key).
    pub const SRC_PROTOCOL: &str = "src_protocol";
    /// The client's IP.
    pub const SRC_IP: &str = "src_ip";
    /// The client's port.
    pub const SRC_PORT: &str = "src_port";
    /// The source address the host should use (`ip` or `ip:port`), from `sourceIp`.
    pub const SOURCE_ADDR: &str = "source_addr";
}

/// One intercepted flow: its protocol, both ends, and the name its destination was reached by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowAddrs {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The client.
    pub src: SocketAddr,
    /// The intercepted destination.
    pub dst: SocketAddr,
    /// The hostname the DNS server gave `dst` out for, if it did.
    pub hostname: Option<String>,
}

/// `tcp` / `udp`, as app data and host configs spell them.
pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

impl FlowAddrs {
    /// Fills in a template's placeholders: `$src_ip`, `$src_port`, `$dst_ip`, `$dst_port`,
    /// `$dst_protocol`, `$dst_hostname` (empty when the flow has no hostname). Used for the
    /// intercept's `sourceIp` and `dialOptions.identity`.
    pub fn expand(&self, template: &str) -> String {
        if !template.contains('$') {
            return template.to_string();
        }
        // Longest names first where one is a prefix of another: none are, but keep the order
        // stable anyway so the result never depends on it.
        template
            .replace("$dst_hostname", self.hostname.as_deref().unwrap_or(""))
            .replace("$dst_protocol", protocol_name(self.protocol))
            .replace("$dst_ip", &self.dst.ip().to_string())
            .replace("$dst_port", &self.dst.port().to_string())
            .replace("$src_ip", &self.src.ip().to_string())
            .replace("$src_port", &self.src.port().to_string())
    }
}

/// A flow's app data: string values by key. Unknown keys are kept, so a host sees whatever the
/// dialer sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppData {
    values: BTreeMap<String, String>,
}

/// App data that is not a JSON object.
#[derive(Debug, thiserror::Error)]
#[error("app data is not a JSON object of strings")]
pub struct AppDataError {
    #[source]
    source: serde_json::Error,
}

impl AppData {
    /// What an intercepting tunneler sends for `flow`; `source_addr` from the intercept's
    /// `sourceIp` template, when it has one.
    pub fn for_flow(flow: &FlowAddrs, source_addr: Option<String>) -> Self {
        let proto = protocol_name(flow.protocol);
        let mut values = BTreeMap::new();
        values.insert(key::DST_PROTOCOL.into(), proto.into());
        values.insert(key::DST_IP.into(), flow.dst.ip().to_string());
        values.insert(key::DST_PORT.into(), flow.dst.port().to_string());
        if let Some(h) = flow.hostname.as_ref().filter(|h| !h.is_empty()) {
            values.insert(key::DST_HOSTNAME.into(), h.clone());
        }
        values.insert(key::SRC_PROTOCOL.into(), proto.into());
        values.insert(key::SRC_IP.into(), flow.src.ip().to_string());
        values.insert(key::SRC_PORT.into(), flow.src.port().to_string());
        if let Some(s) = source_addr.filter(|s| !s.is_empty()) {
            values.insert(key::SOURCE_ADDR.into(), s);
        }
        AppData { values }
    }

    /// Reads app data a dialer sent. Numbers and booleans are taken as their text (some
    /// dialers send the port as a number); nested values are ignored.
    pub fn parse(bytes: &[u8]) -> Result<Self, AppDataError> {
        let map: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(bytes).map_err(|source| AppDataError { source })?;
        let values = map
            .into_iter()
            .filter_map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    _ => return None,
                };
                Some((k, text))
            })
            .collect();
        Ok(AppData { values })
    }

    /// The JSON to attach to a dial.
    pub fn to_json(&self) -> Bytes {
        // A map of strings always serializes.
        Bytes::from(serde_json::to_vec(&self.values).unwrap_or_default())
    }

    /// The value of `key`, if sent.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// Sets `key` (for dialers that add their own values).
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.values.insert(key.into(), value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(hostname: Option<&str>) -> FlowAddrs {
        FlowAddrs {
            protocol: Protocol::Tcp,
            src: "100.64.0.1:40000".parse().unwrap(),
            dst: "100.64.0.7:8443".parse().unwrap(),
            hostname: hostname.map(str::to_string),
        }
    }

    #[test]
    fn a_flow_becomes_the_keys_go_and_c_tunnelers_send() {
        let a = AppData::for_flow(&flow(Some("db.corp")), Some("100.64.0.1:40000".into()));
        let json: serde_json::Value = serde_json::from_slice(&a.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "dst_protocol": "tcp", "dst_ip": "100.64.0.7", "dst_port": "8443",
                "dst_hostname": "db.corp", "src_protocol": "tcp", "src_ip": "100.64.0.1",
                "src_port": "40000", "source_addr": "100.64.0.1:40000",
            })
        );
        let plain = AppData::for_flow(&flow(None), None);
        assert_eq!(plain.get(key::DST_HOSTNAME), None);
        assert_eq!(plain.get(key::SOURCE_ADDR), None);
    }

    #[test]
    fn parse_takes_strings_and_numbers_and_refuses_non_objects() {
        let a =
            AppData::parse(br#"{"dst_port": 8080, "dst_ip": "10.0.0.1", "x": {"y": 1}}"#).unwrap();
        assert_eq!(a.get(key::DST_PORT), Some("8080"));
        assert_eq!(a.get(key::DST_IP), Some("10.0.0.1"));
        assert_eq!(a.get("x"), None);
        assert!(AppData::parse(b"[1,2]").is_err());
        assert!(AppData::parse(b"\xff").is_err());
        let round = AppData::for_flow(&flow(Some("a.b")), None);
        assert_eq!(AppData::parse(&round.to_json()).unwrap(), round);
    }

    #[test]
    fn templates_fill_in_every_placeholder() {
        let f = flow(Some("db.corp"));
        assert_eq!(f.expand("$src_ip:$src_port"), "100.64.0.1:40000");
        assert_eq!(f.expand("$src_ip:$dst_port"), "100.64.0.1:8443");
        assert_eq!(
            f.expand("$dst_protocol-$dst_hostname-$dst_ip"),
            "tcp-db.corp-100.64.0.7"
        );
        assert_eq!(f.expand("fixed"), "fixed");
        assert_eq!(flow(None).expand("h=$dst_hostname"), "h=");
    }
}
