//! A thin OSB client: one method per endpoint, answers kept raw for the checks to judge.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::Target;

/// What the testkit sends as `X-Broker-API-Originating-Identity`, as Cloud Foundry does:
/// `cloudfoundry` and base64 of `{"user_id":"kpaas-testkit-user"}`.
pub const ORIGINATING_IDENTITY: &str = "cloudfoundry eyJ1c2VyX2lkIjoia3BhYXMtdGVzdGtpdC11c2VyIn0=";

/// A broker's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    /// The OSB `error` code of an error body.
    pub fn error(&self) -> Option<&str> {
        self.body.get("error").and_then(Value::as_str)
    }

    pub fn operation(&self) -> Option<String> {
        self.body
            .get("operation")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }
}

/// The operations a 202 started, by operation value: `last_operation` may carry
/// `instance_usable` only for updates and deprovisions, `update_repeatable` only for updates.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Started {
    Provision,
    Update,
    Deprovision,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub target: Target,
    started: Arc<Mutex<HashMap<String, Started>>>,
}

impl Client {
    pub fn new(target: Target) -> Self {
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(120));
        if target.fresh_connections {
            http = http.pool_max_idle_per_host(0);
        }
        Self {
            http: http.build().expect("http client"),
            target,
            started: Arc::default(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.target.base_url.trim_end_matches('/'))
    }

    /// Sends a request with the usual OSB headers; `body` `None` sends none.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Reply> {
        let mut req = self
            .http
            .request(method.clone(), self.url(path))
            .basic_auth(&self.target.username, Some(&self.target.password))
            .header("X-Broker-API-Version", "2.17")
            .header("X-Broker-API-Originating-Identity", ORIGINATING_IDENTITY);
        if let Some(body) = body {
            req = req.json(body);
        }
        let reply = Self::finish(req).await?;
        self.judge(&method, path, &reply).with_context(|| {
            format!("{method} {path} answered {}: {}", reply.status, reply.body)
        })?;
        Ok(reply)
    }

    /// What every answer must respect, whichever check sent the request: error bodies say
    /// why, and `instance_usable` / `update_repeatable` appear only where the spec allows
    /// them ("MUST NOT be present for errors of other operations").
    fn judge(&self, method: &reqwest::Method, path: &str, reply: &Reply) -> anyhow::Result<()> {
        use reqwest::Method;
        let (route, query) = path.split_once('?').unwrap_or((path, ""));
        let binding = route.contains("/service_bindings/");
        let polled = route.ends_with("/last_operation");
        let instance = route.starts_with("/v2/service_instances/") && !binding;
        if reply.status >= 400 && reply.status != 410 {
            let described = reply.body["description"]
                .as_str()
                .is_some_and(|d| !d.trim().is_empty());
            if !described {
                bail!("an error body without a description");
            }
        }
        // "If present, MUST be a non-empty string" (last_operation's description).
        if polled
            && reply
                .body
                .get("description")
                .is_some_and(|d| d.as_str().is_none_or(|d| d.trim().is_empty()))
        {
            bail!("a last_operation description that is not a non-empty string");
        }
        let mut started = self.started.lock().expect("operations");
        if reply.status == 202
            && instance
            && let Some(op) = reply.operation()
        {
            let kind = match *method {
                Method::PUT => Started::Provision,
                Method::PATCH => Started::Update,
                _ => Started::Deprovision,
            };
            started.insert(op, kind);
        }
        let kind = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("operation="))
            .and_then(|op| started.get(op).copied());
        let failed_error = reply.status >= 400 && !polled;
        let failed_poll = polled && reply.body["state"] == "failed";
        let usable = instance
            && ((failed_error && [Method::PATCH, Method::DELETE].contains(method))
                || (failed_poll && kind != Some(Started::Provision)));
        let repeatable = instance
            && ((failed_error && *method == Method::PATCH)
                || (failed_poll && kind.is_none_or(|k| k == Started::Update)));
        for (field, allowed) in [
            ("instance_usable", usable),
            ("update_repeatable", repeatable),
        ] {
            if reply.body.get(field).is_some() && !allowed {
                bail!(
                    "`{field}` where the spec forbids it (only failed updates{})",
                    if field == "instance_usable" {
                        " and deprovisions"
                    } else {
                        ""
                    }
                );
            }
        }
        Ok(())
    }

    /// Sends a prepared request and reads the answer.
    pub async fn finish(req: reqwest::RequestBuilder) -> anyhow::Result<Reply> {
        let res = req.send().await.context("request failed")?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.context("reading body")?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            let json = headers
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|t| t.to_str().ok())
                .is_some_and(|t| t.starts_with("application/json"));
            if !json {
                bail!("a body not sent as application/json ({status}): {text}");
            }
            if let Some(key) = crate::body::duplicate_key(&text) {
                bail!("a body with the key `{key}` twice ({status}): {text}");
            }
            serde_json::from_str(&text)
                .with_context(|| format!("body is not JSON ({status}): {text}"))?
        };
        Ok(Reply {
            status,
            body,
            headers,
        })
    }

    /// A request builder without the OSB headers, for the checks of auth and headers.
    pub fn raw(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path))
    }

    pub fn provision_body(&self, plan_id: &str) -> Value {
        json!({
            "service_id": self.target.service_id,
            "plan_id": plan_id,
            "organization_guid": "org-guid",
            "space_guid": "space-guid",
            "context": {"platform": "cloudfoundry", "organization_guid": "org-guid", "space_guid": "space-guid"},
            "parameters": self.target.provision_parameters,
            // Vendor extensions must be ignored (spec: "Vendor Extension Fields").
            "x-kpaas-testkit": {"note": "unknown fields are tolerated"},
        })
    }

    pub fn bind_body(&self, plan_id: &str) -> Value {
        json!({
            "service_id": self.target.service_id,
            "plan_id": plan_id,
            "bind_resource": {"app_guid": "app-guid"},
            "context": {"platform": "cloudfoundry"},
        })
    }

    /// The path of an instance, or of one of its bindings.
    fn path(id: &str, bid: Option<&str>) -> String {
        match bid {
            Some(bid) => format!("/v2/service_instances/{id}/service_bindings/{bid}"),
            None => format!("/v2/service_instances/{id}"),
        }
    }

    /// A query string from its present parts: `?a=1&b=2`, or nothing.
    fn query(parts: &[Option<String>]) -> String {
        let present: Vec<&str> = parts.iter().flatten().map(String::as_str).collect();
        if present.is_empty() {
            String::new()
        } else {
            format!("?{}", present.join("&"))
        }
    }

    fn incomplete(accepts: bool) -> Option<String> {
        accepts.then(|| "accepts_incomplete=true".to_owned())
    }

    /// `DELETE` on an instance or binding, with the ids the spec requires.
    async fn delete(
        &self,
        id: &str,
        bid: Option<&str>,
        plan_id: &str,
        accepts: bool,
    ) -> anyhow::Result<Reply> {
        let query = Self::query(&[
            Some(format!("service_id={}", self.target.service_id)),
            Some(format!("plan_id={plan_id}")),
            Self::incomplete(accepts),
        ]);
        let path = format!("{}{query}", Self::path(id, bid));
        self.send(reqwest::Method::DELETE, &path, None).await
    }

    pub async fn provision(&self, id: &str, body: &Value, accepts: bool) -> anyhow::Result<Reply> {
        let path = format!(
            "{}{}",
            Self::path(id, None),
            Self::query(&[Self::incomplete(accepts)])
        );
        self.send(reqwest::Method::PUT, &path, Some(body)).await
    }

    pub async fn update(&self, id: &str, body: &Value, accepts: bool) -> anyhow::Result<Reply> {
        let path = format!(
            "{}{}",
            Self::path(id, None),
            Self::query(&[Self::incomplete(accepts)])
        );
        self.send(reqwest::Method::PATCH, &path, Some(body)).await
    }

    pub async fn deprovision(
        &self,
        id: &str,
        plan_id: &str,
        accepts: bool,
    ) -> anyhow::Result<Reply> {
        self.delete(id, None, plan_id, accepts).await
    }

    pub async fn fetch_instance(&self, id: &str) -> anyhow::Result<Reply> {
        self.send(reqwest::Method::GET, &Self::path(id, None), None)
            .await
    }

    pub async fn instance_last_operation(
        &self,
        id: &str,
        operation: Option<&str>,
    ) -> anyhow::Result<Reply> {
        self.last_operation(id, None, operation).await
    }

    pub async fn bind(
        &self,
        id: &str,
        bid: &str,
        body: &Value,
        accepts: bool,
    ) -> anyhow::Result<Reply> {
        let path = format!(
            "{}{}",
            Self::path(id, Some(bid)),
            Self::query(&[Self::incomplete(accepts)])
        );
        self.send(reqwest::Method::PUT, &path, Some(body)).await
    }

    pub async fn unbind(
        &self,
        id: &str,
        bid: &str,
        plan_id: &str,
        accepts: bool,
    ) -> anyhow::Result<Reply> {
        self.delete(id, Some(bid), plan_id, accepts).await
    }

    pub async fn fetch_binding(&self, id: &str, bid: &str) -> anyhow::Result<Reply> {
        self.send(reqwest::Method::GET, &Self::path(id, Some(bid)), None)
            .await
    }

    pub async fn binding_last_operation(
        &self,
        id: &str,
        bid: &str,
        operation: Option<&str>,
    ) -> anyhow::Result<Reply> {
        self.last_operation(id, Some(bid), operation).await
    }

    /// `last_operation` of an instance, or of one of its bindings.
    async fn last_operation(
        &self,
        id: &str,
        bid: Option<&str>,
        operation: Option<&str>,
    ) -> anyhow::Result<Reply> {
        let query = Self::query(&[operation.map(|o| format!("operation={o}"))]);
        let path = format!("{}/last_operation{query}", Self::path(id, bid));
        self.send(reqwest::Method::GET, &path, None).await
    }

    /// Polls until the operation leaves "in progress"; returns the final `last_operation` body,
    /// or the 410 reply of a finished delete.
    pub async fn poll(
        &self,
        id: &str,
        bid: Option<&str>,
        operation: Option<&str>,
    ) -> anyhow::Result<Reply> {
        let started = Instant::now();
        loop {
            let reply = self.last_operation(id, bid, operation).await?;
            if reply.status == 410 {
                return Ok(reply);
            }
            if reply.status != 200 {
                bail!("last_operation answered {}: {}", reply.status, reply.body);
            }
            if reply.body["state"] != "in progress" {
                return Ok(reply);
            }
            if started.elapsed() > self.target.poll_timeout {
                bail!(
                    "operation still in progress after {:?}",
                    self.target.poll_timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Provisions and, if the broker answers 202, polls to the end. Fails unless it succeeded.
    pub async fn provision_ready(&self, id: &str, plan_id: &str) -> anyhow::Result<Reply> {
        let reply = self
            .provision(id, &self.provision_body(plan_id), true)
            .await?;
        match reply.status {
            201 | 200 => Ok(reply),
            202 => {
                let last = self.poll(id, None, reply.operation().as_deref()).await?;
                if last.body["state"] != "succeeded" {
                    bail!("provision failed: {}", last.body);
                }
                Ok(reply)
            }
            s => bail!("provision answered {s}: {}", reply.body),
        }
    }

    /// Binds (polling if needed) and returns the binding's body with credentials.
    pub async fn bind_ready(&self, id: &str, bid: &str, plan_id: &str) -> anyhow::Result<Value> {
        let reply = self.bind(id, bid, &self.bind_body(plan_id), true).await?;
        match reply.status {
            201 | 200 => Ok(reply.body),
            202 => {
                let last = self
                    .poll(id, Some(bid), reply.operation().as_deref())
                    .await?;
                if last.body["state"] != "succeeded" {
                    bail!("bind failed: {}", last.body);
                }
                let fetched = self.fetch_binding(id, bid).await?;
                if fetched.status != 200 {
                    bail!("fetch of a new binding answered {}", fetched.status);
                }
                Ok(fetched.body)
            }
            s => bail!("bind answered {s}: {}", reply.body),
        }
    }

    /// Unbinds (polling if needed); fails unless the binding is gone.
    pub async fn unbind_done(&self, id: &str, bid: &str, plan_id: &str) -> anyhow::Result<()> {
        let reply = self.unbind(id, bid, plan_id, true).await?;
        self.deleted(reply, id, Some(bid), "unbind").await
    }

    /// Deprovisions (polling if needed); fails unless the instance is gone.
    pub async fn deprovision_done(&self, id: &str, plan_id: &str) -> anyhow::Result<()> {
        let reply = self.deprovision(id, plan_id, true).await?;
        self.deleted(reply, id, None, "deprovision").await
    }

    /// Follows a delete's answer to its end: 200 at once, or 202 then polling to 410/succeeded.
    async fn deleted(
        &self,
        reply: Reply,
        id: &str,
        bid: Option<&str>,
        what: &str,
    ) -> anyhow::Result<()> {
        match reply.status {
            200 => Ok(()),
            202 => {
                let last = self.poll(id, bid, reply.operation().as_deref()).await?;
                if last.status != 410 && last.body["state"] != "succeeded" {
                    bail!("{what} failed: {}", last.body);
                }
                Ok(())
            }
            s => bail!("{what} answered {s}: {}", reply.body),
        }
    }
}

/// A fresh id, so that checks never collide.
pub fn fresh_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
