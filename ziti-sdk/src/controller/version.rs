//! `GET /version`: controller version, capabilities and API bindings (edge-client-api.md §3.1).

use std::collections::HashMap;

use serde::Deserialize;
use url::Url;

use super::{ApiError, ControllerError, Unreachable};

/// One API binding: `{path, apiBaseUrls}`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ApiBinding {
    /// Path below the controller root, e.g. `/edge/client/v1`.
    #[serde(default)]
    pub path: String,
    /// Absolute base URLs.
    #[serde(default)]
    pub api_base_urls: Vec<String>,
}

/// The `data` of `GET /version`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    /// e.g. `v2.0.3`.
    #[serde(default)]
    pub version: String,
    /// Git revision.
    #[serde(default)]
    pub revision: String,
    /// Build date.
    #[serde(default)]
    pub build_date: String,
    /// Capabilities such as `OIDC_AUTH`, `HA_CONTROLLER`.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Binding name (`edge-client`, `edge-oidc`, ...) -> version (`v1`) -> binding.
    #[serde(default)]
    pub api_versions: HashMap<String, HashMap<String, ApiBinding>>,
}

impl VersionInfo {
    /// True when the controller has `capability`.
    pub fn has_capability(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }

    /// OIDC is usable: `OIDC_AUTH` advertised and an `edge-oidc` API bound (the C SDK's rule).
    pub fn supports_oidc(&self) -> bool {
        self.has_capability("OIDC_AUTH") && self.api_versions.contains_key("edge-oidc")
    }
}

/// Reads `/version` below a Client API URL (no authentication needed).
pub(crate) async fn fetch(
    http: &reqwest::Client,
    api: &Url,
) -> Result<VersionInfo, ControllerError> {
    let url = super::api_join(api, "version")?;
    let resp = http
        .get(url.clone())
        .send()
        .await
        .map_err(|e| Unreachable::new(&url, e))?;
    let status = resp.status().as_u16();
    let body = super::read_body(&url, resp).await?;
    if status != 200 {
        return Err(ControllerError::Api(ApiError::from_body(status, &body)));
    }
    #[derive(Deserialize)]
    struct Env {
        data: VersionInfo,
    }
    serde_json::from_slice::<Env>(&body)
        .map(|e| e.data)
        .map_err(|source| ControllerError::Decode {
            what: "GET version".into(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quickstart_version() {
        let body = serde_json::json!({"data":{"version":"v2.0.3","revision":"e86e337","buildDate":"2026",
            "runtimeVersion":"go1.24","capabilities":["OIDC_AUTH","OIDC_AUTH_WITH_CSR","HA_CONTROLLER"],
            "apiVersions":{"edge":{"v1":{"path":"/edge/client/v1","apiBaseUrls":["https://127.0.0.1:1280/edge/client/v1"]}},
            "edge-oidc":{"v1":{"path":"/oidc","apiBaseUrls":["https://127.0.0.1:1280/oidc"]}}}},"meta":{}});
        let v: VersionInfo = serde_json::from_value(body["data"].clone()).unwrap();
        assert!(v.supports_oidc());
        assert!(v.has_capability("HA_CONTROLLER"));
        assert_eq!(v.api_versions["edge-oidc"]["v1"].path, "/oidc");
    }
}
