//! Services visible to the identity, their typed configs, and change events
//! (edge-client-api.md §4).

mod config;
mod watch;

use std::collections::BTreeMap;

use serde_json::Value;

pub use config::{
    AddressTranslation, CheckAction, DialOptions, HostV1, HostV2, HttpCheck, InterceptAddress,
    InterceptV1, ListenOptions, PortCheck, PortRange, Precedence, Protocol, ProxyConfig,
    ZitiTunnelerClientV1, parse_duration,
};
pub use watch::{DEFAULT_REFRESH_INTERVAL, ServiceEvent};

use crate::controller::{Controller, ControllerError};

/// Dial/Bind grants of the identity on a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Permissions {
    /// May connect to the service.
    pub dial: bool,
    /// May host the service.
    pub bind: bool,
}

/// The configs attached to a service, by type.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServiceConfigs {
    /// `intercept.v1`.
    pub intercept_v1: Option<InterceptV1>,
    /// `ziti-tunneler-client.v1`.
    pub tunneler_client_v1: Option<ZitiTunnelerClientV1>,
    /// `host.v1`.
    pub host_v1: Option<HostV1>,
    /// `host.v2`.
    pub host_v2: Option<HostV2>,
    /// Any other config type, verbatim.
    pub other: BTreeMap<String, Value>,
}

impl ServiceConfigs {
    /// Parses the `config` object of a service. A config that does not match its schema is
    /// logged and skipped; the others are kept.
    pub fn from_json(service: &str, config: &Value) -> Self {
        let mut out = Self::default();
        let Some(map) = config.as_object() else {
            return out;
        };
        for (kind, v) in map {
            let result = match kind.as_str() {
                "intercept.v1" => parse(v).map(|c| out.intercept_v1 = Some(c)),
                "ziti-tunneler-client.v1" => parse(v).map(|c| out.tunneler_client_v1 = Some(c)),
                "host.v1" => parse(v).map(|c| out.host_v1 = Some(c)),
                "host.v2" => parse(v).map(|c| out.host_v2 = Some(c)),
                _ => {
                    out.other.insert(kind.clone(), v.clone());
                    Ok(())
                }
            };
            if let Err(e) = result {
                tracing::warn!(service, config_type = %kind, error = %crate::error_report::error_chain(&e), "ignoring malformed service config");
            }
        }
        out
    }

    /// What to intercept: `intercept.v1`, else the converted `ziti-tunneler-client.v1`.
    pub fn intercept(&self) -> Option<InterceptV1> {
        self.intercept_v1.clone().or_else(|| {
            self.tunneler_client_v1
                .as_ref()
                .map(ZitiTunnelerClientV1::to_intercept)
        })
    }

    /// How to host: the `host.v2` terminators, else `host.v1` as one terminator.
    pub fn host_terminators(&self) -> Vec<HostV1> {
        match (&self.host_v2, &self.host_v1) {
            (Some(v2), _) => v2.terminators.clone(),
            (None, Some(v1)) => vec![v1.clone()],
            (None, None) => Vec::new(),
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, serde_json::Error> {
    T::deserialize(v)
}

/// A service the identity can Dial and/or Bind.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Service id.
    pub id: String,
    /// Service name.
    pub name: String,
    /// Grants.
    pub permissions: Permissions,
    /// End-to-end encryption required.
    pub encryption_required: bool,
    /// Typed configs.
    pub configs: ServiceConfigs,
    /// Role attributes.
    pub role_attributes: Vec<String>,
}

impl Service {
    /// Builds a service from one `serviceDetail` object; `None` without id or name.
    pub fn from_json(v: &Value) -> Option<Self> {
        let id = v.get("id")?.as_str()?.to_string();
        let name = v.get("name")?.as_str()?.to_string();
        let strings = |key: &str| -> Vec<String> {
            v.get(key)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let perms = strings("permissions");
        let permissions = Permissions {
            dial: perms.iter().any(|p| p.eq_ignore_ascii_case("dial")),
            bind: perms.iter().any(|p| p.eq_ignore_ascii_case("bind")),
        };
        let configs = ServiceConfigs::from_json(&name, v.get("config").unwrap_or(&Value::Null));
        Some(Self {
            encryption_required: v
                .get("encryptionRequired")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            role_attributes: strings("roleAttributes"),
            id,
            name,
            permissions,
            configs,
        })
    }
}

impl Controller {
    /// Every service the identity may use (all pages), configs parsed.
    pub async fn services(&self) -> Result<Vec<Service>, ControllerError> {
        self.list_services(None).await
    }

    /// One service by exact name, `None` when it is not visible to this identity.
    pub async fn service_by_name(&self, name: &str) -> Result<Option<Service>, ControllerError> {
        // ZitiQL string literal: escape backslashes and quotes.
        let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
        let filter = format!("name=\"{escaped}\"");
        let mut found = self.list_services(Some(&filter)).await?;
        found.retain(|s| s.name == name);
        Ok(found.into_iter().next())
    }

    async fn list_services(&self, filter: Option<&str>) -> Result<Vec<Service>, ControllerError> {
        let cfg_types = self.config().config_types.clone();
        let mut query: Vec<(&str, &str)> = cfg_types
            .iter()
            .map(|t| ("configTypes", t.as_str()))
            .collect();
        if let Some(f) = filter {
            query.push(("filter", f));
        }
        let raw = self.get_all_pages("services", &query).await?;
        Ok(raw
            .iter()
            .filter_map(|v| {
                let s = Service::from_json(v);
                if s.is_none() {
                    tracing::warn!("ignoring service entry without id/name");
                }
                s
            })
            .collect())
    }

    /// `GET /current-api-session/service-updates`: when services or policies affecting this
    /// identity last changed (RFC 3339 text; compared for equality only).
    pub async fn services_last_changed(&self) -> Result<String, ControllerError> {
        let (data, _): (Value, _) = self.get_data("current-api-session/service-updates").await?;
        Ok(data
            .get("lastChangeAt")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_detail_with_mixed_configs() {
        let v = serde_json::json!({
            "id":"s1","name":"echo","permissions":["Dial","Bind"],"encryptionRequired":true,
            "roleAttributes":["echo"],
            "config":{
                "intercept.v1":{"protocols":["tcp"],"addresses":["echo.ziti"],"portRanges":[{"low":7,"high":7}]},
                "host.v1":{"protocol":"tcp","address":"127.0.0.1","port":"not-a-number"},
                "ziti-tunneler-client.v1":{"hostname":"old.ziti","port":80},
                "proxy.v1":{"port":9000}
            }
        });
        let s = Service::from_json(&v).unwrap();
        assert_eq!(
            s.permissions,
            Permissions {
                dial: true,
                bind: true
            }
        );
        assert!(s.encryption_required);
        assert!(s.configs.intercept_v1.is_some());
        // The malformed host.v1 is skipped, the rest survives.
        assert!(s.configs.host_v1.is_none());
        assert_eq!(s.configs.other["proxy.v1"]["port"], 9000);
        // intercept.v1 wins over the tunneler client config.
        assert_eq!(
            s.configs.intercept().unwrap().addresses,
            [InterceptAddress::Hostname("echo.ziti".into())]
        );
        assert!(s.configs.host_terminators().is_empty());
    }

    #[test]
    fn fallbacks_between_config_generations() {
        let v = serde_json::json!({"id":"s","name":"n","permissions":["Bind"],
            "config":{"ziti-tunneler-client.v1":{"hostname":"old.ziti","port":80},
                      "host.v1":{"protocol":"udp","address":"x","port":1},
                      "host.v2":{"terminators":[{"protocol":"tcp","address":"a","port":2},{"protocol":"tcp","address":"b","port":3}]}}});
        let s = Service::from_json(&v).unwrap();
        assert!(!s.permissions.dial && s.permissions.bind);
        assert_eq!(
            s.configs.intercept().unwrap().port_ranges,
            [PortRange { low: 80, high: 80 }]
        );
        assert_eq!(s.configs.host_terminators().len(), 2);
        assert!(Service::from_json(&serde_json::json!({"name":"x"})).is_none());
    }
}
