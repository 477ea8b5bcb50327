//! Authenticated requests to the Client API: session header, one retry after a 401, envelope
//! decoding and paging.

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{ApiError, ApiToken, Controller, ControllerError, Unreachable, api_join, read_body};

/// `{"data": T, "meta": {...}}`.
#[derive(serde::Deserialize)]
struct Envelope<T> {
    data: T,
    #[serde(default)]
    meta: Value,
}

impl Controller {
    /// Sends an authenticated request to `rel` (relative to the Client API, may include a query)
    /// and returns the body of a 2xx answer. On 401 the session is renewed once and the request
    /// retried; when the controller does not answer, the next member of its cluster is asked.
    pub(crate) async fn request(
        &self,
        method: reqwest::Method,
        rel: &str,
        body: Option<&Value>,
    ) -> Result<Vec<u8>, ControllerError> {
        on_any_controller!(self, api => self.request_at(&api, method.clone(), rel, body).await)
    }

    async fn request_at(
        &self,
        api: &url::Url,
        method: reqwest::Method,
        rel: &str,
        body: Option<&Value>,
    ) -> Result<Vec<u8>, ControllerError> {
        let url = api_join(api, rel)?;
        for attempt in 0..2 {
            let token = self.current_access_token().await?;
            let (name, value) = token.header();
            let mut rb = self
                .inner
                .http
                .request(method.clone(), url.clone())
                .header(name, value)
                .header("accept", "application/json");
            if let Some(b) = body {
                rb = rb.json(b);
            }
            let resp = rb.send().await.map_err(|e| Unreachable::new(&url, e))?;
            let status = resp.status().as_u16();
            let bytes = read_body(&url, resp).await?;
            if (200..300).contains(&status) {
                return Ok(bytes);
            }
            let err = ApiError::from_body(status, &bytes);
            if attempt == 0 && status == 401 {
                tracing::debug!(url = %url, "401 from controller; renewing the API session");
                self.invalidate(&token).await;
                continue;
            }
            return Err(ControllerError::Api(err));
        }
        Err(ControllerError::Protocol("request retry exhausted".into()))
    }

    /// Drops the session if it still holds `token` (someone else may have renewed it already).
    async fn invalidate(&self, token: &ApiToken) {
        let mut guard = self.inner.auth.lock().await;
        if guard
            .as_ref()
            .is_some_and(|s| s.token.secret() == token.secret())
        {
            *guard = None;
        }
    }

    /// GET returning the envelope's `data` and `meta`.
    pub(crate) async fn get_data<T: DeserializeOwned>(
        &self,
        rel: &str,
    ) -> Result<(T, Value), ControllerError> {
        let body = self.request(reqwest::Method::GET, rel, None).await?;
        let env: Envelope<T> =
            serde_json::from_slice(&body).map_err(|source| ControllerError::Decode {
                what: format!("GET {rel}"),
                source,
            })?;
        Ok((env.data, env.meta))
    }

    /// GET of every page of a listing (`limit=500`), `query` being extra `k=v` pairs.
    pub(crate) async fn get_all_pages(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Vec<Value>, ControllerError> {
        const LIMIT: usize = 500;
        // Hard stop against a controller that keeps reporting a growing total.
        const MAX_PAGES: usize = 200;
        let mut out = Vec::new();
        for page in 0..MAX_PAGES {
            // The serializer is not Send: finish it before awaiting.
            let rel = {
                let mut qs = url::form_urlencoded::Serializer::new(String::new());
                qs.append_pair("limit", &LIMIT.to_string());
                qs.append_pair("offset", &(page * LIMIT).to_string());
                for (k, v) in query {
                    qs.append_pair(k, v);
                }
                format!("{path}?{}", qs.finish())
            };
            let (items, meta): (Vec<Value>, Value) = self.get_data(&rel).await?;
            let n = items.len();
            out.extend(items);
            let total = meta
                .pointer("/pagination/totalCount")
                .and_then(Value::as_u64)
                .and_then(|t| usize::try_from(t).ok());
            let done = match total {
                Some(t) => out.len() >= t,
                None => n < LIMIT,
            };
            if done || n == 0 {
                break;
            }
        }
        Ok(out)
    }

    /// POST returning the envelope's `data`.
    pub(crate) async fn post_data<T: DeserializeOwned>(
        &self,
        rel: &str,
        body: &Value,
    ) -> Result<T, ControllerError> {
        let bytes = self.request(reqwest::Method::POST, rel, Some(body)).await?;
        let env: Envelope<T> =
            serde_json::from_slice(&bytes).map_err(|source| ControllerError::Decode {
                what: format!("POST {rel}"),
                source,
            })?;
        Ok(env.data)
    }
}
