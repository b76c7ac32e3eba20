//! The spec's rules as checks. Each check is independent (fresh ids) and names what it saw
//! when it fails; `check_all` runs them all and reports every failure together.

use std::future::Future;

use anyhow::{Context, bail, ensure};
use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};

use crate::Target;
use crate::client::{Client, Reply, fresh_id};

mod bindings;
use bindings::*;

/// Why a rule could not run against a target (it lacks what the rule needs).
#[derive(Debug)]
struct CannotRun(&'static str);

impl std::fmt::Display for CannotRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for CannotRun {}

fn expect(reply: &Reply, status: u16, what: &str) -> anyhow::Result<()> {
    ensure!(
        reply.status == status,
        "{what}: expected {status}, got {} {}",
        reply.status,
        reply.body
    );
    Ok(())
}

/// An error answer: its status, the spec's `error` code where one is named, and a description.
fn expect_error(reply: &Reply, status: u16, code: Option<&str>, what: &str) -> anyhow::Result<()> {
    expect(reply, status, what)?;
    let description = reply
        .body
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or("");
    ensure!(
        !description.is_empty(),
        "{what}: error body has no description: {}",
        reply.body
    );
    if let Some(code) = code {
        ensure!(
            reply.error() == Some(code),
            "{what}: expected error {code}, got {}",
            reply.body
        );
    }
    Ok(())
}

/// Runs every single-broker check; fails listing each check that failed.
pub async fn check_all(target: &Target) -> anyhow::Result<()> {
    let c = Client::new(target.clone());
    let mut failures = Vec::new();
    let mut skipped = Vec::new();
    macro_rules! run {
        ($($check:ident),+ $(,)?) => {$(
            match $check(&c).await {
                Ok(()) => {}
                // A rule that cannot run fails the run, unless the target opted out of it.
                Err(e) => match e.downcast_ref::<CannotRun>() {
                    Some(why) if target.skip.contains(&stringify!($check)) => {
                        skipped.push(format!("{}: {why}", stringify!($check)));
                    }
                    Some(why) => failures.push(format!(
                        "{}: cannot run: {why}; set it in the Target or list the rule in Target::skip",
                        stringify!($check)
                    )),
                    None => failures.push(format!("{}: {e:#}", stringify!($check))),
                },
            }
        )+};
    }
    run!(
        auth_is_required_on_every_route,
        api_version_header_is_enforced,
        request_identity_is_echoed,
        catalog_lists_the_service,
        catalog_answers_conditional_requests,
        full_lifecycle_is_idempotent,
        generated_client_bodies_run_the_whole_lifecycle,
        conflicting_repeats_return_409,
        malformed_requests_return_400_with_error_body,
        missing_resources_return_404_or_410,
        identical_concurrent_requests_act_once,
        plan_updates_follow_the_catalog,
        plan_changes_from_a_fixed_plan_are_refused,
        parameters_are_validated_against_the_schema,
        async_operations_follow_the_polling_rules,
        updates_keep_the_plan_they_do_not_name,
        plan_changes_keep_the_parameters,
        binding_rotation_follows_the_plan,
        bindings_that_need_an_app_are_refused_without_one,
    );
    for rule in &target.skip {
        if !skipped.iter().any(|s| s.starts_with(&format!("{rule}:"))) {
            failures.push(format!(
                "{rule}: listed in Target::skip but it ran (or is no rule)"
            ));
        }
    }
    if !skipped.is_empty() {
        // The report names what was not checked; the test output shows it.
        eprintln!(
            "osb-testkit skipped {} rule(s):\n  {}",
            skipped.len(),
            skipped.join("\n  ")
        );
    }
    if failures.is_empty() {
        Ok(())
    } else {
        bail!(
            "{} check(s) failed:\n{}",
            failures.len(),
            failures.join("\n")
        )
    }
}

/// Every route of the API, as (method, path) for fresh ids.
fn every_route() -> Vec<(Method, String)> {
    let (id, bid) = (fresh_id(), fresh_id());
    let instance = format!("/v2/service_instances/{id}");
    let binding = format!("{instance}/service_bindings/{bid}");
    vec![
        (Method::GET, "/v2/catalog".to_owned()),
        (Method::PUT, instance.clone()),
        (Method::PATCH, instance.clone()),
        (Method::DELETE, instance.clone()),
        (Method::GET, instance.clone()),
        (Method::GET, format!("{instance}/last_operation")),
        (Method::PUT, binding.clone()),
        (Method::DELETE, binding.clone()),
        (Method::GET, binding.clone()),
        (Method::GET, format!("{binding}/last_operation")),
    ]
}

async fn auth_is_required_on_every_route(c: &Client) -> anyhow::Result<()> {
    for (method, path) in every_route() {
        let none = Client::finish(
            c.raw(method.clone(), &path)
                .header("X-Broker-API-Version", "2.17"),
        )
        .await?;
        expect(&none, 401, &format!("{method} {path} without credentials"))?;
        let wrong = Client::finish(
            c.raw(method.clone(), &path)
                .header("X-Broker-API-Version", "2.17")
                .basic_auth(&c.target.username, Some("wrong-password")),
        )
        .await?;
        expect(
            &wrong,
            401,
            &format!("{method} {path} with a wrong password"),
        )?;
    }
    Ok(())
}

async fn api_version_header_is_enforced(c: &Client) -> anyhow::Result<()> {
    let auth =
        |r: reqwest::RequestBuilder| r.basic_auth(&c.target.username, Some(&c.target.password));
    let missing = Client::finish(auth(c.raw(Method::GET, "/v2/catalog"))).await?;
    expect_error(&missing, 400, None, "catalog without X-Broker-API-Version")?;
    for old in ["2.12", "1.0", "3.0", "banana"] {
        let reply = Client::finish(
            auth(c.raw(Method::GET, "/v2/catalog")).header("X-Broker-API-Version", old),
        )
        .await?;
        expect_error(&reply, 412, None, &format!("catalog with version {old}"))?;
    }
    let ok = Client::finish(
        auth(c.raw(Method::GET, "/v2/catalog")).header("X-Broker-API-Version", "2.13"),
    )
    .await?;
    expect(&ok, 200, "catalog with version 2.13")?;
    // Every route, not the catalog only.
    for (method, path) in every_route() {
        let missing = Client::finish(auth(c.raw(method.clone(), &path))).await?;
        expect_error(
            &missing,
            400,
            None,
            &format!("{method} {path} without a version"),
        )?;
        let old = Client::finish(
            auth(c.raw(method.clone(), &path)).header("X-Broker-API-Version", "2.12"),
        )
        .await?;
        expect_error(
            &old,
            412,
            None,
            &format!("{method} {path} with version 2.12"),
        )?;
    }
    Ok(())
}

/// `X-Broker-API-Request-Identity` comes back on every answer: success, refusals of the
/// guard (credentials, version) and errors of the endpoints.
async fn request_identity_is_echoed(c: &Client) -> anyhow::Result<()> {
    let id = fresh_id();
    let instance = format!("/v2/service_instances/{id}");
    let own = c.target.password.as_str();
    let cases = [
        (
            "catalog",
            Method::GET,
            "/v2/catalog",
            Some("2.17"),
            own,
            200,
        ),
        (
            "wrong password",
            Method::GET,
            "/v2/catalog",
            Some("2.17"),
            "wrong-password",
            401,
        ),
        (
            "no version header",
            Method::GET,
            "/v2/catalog",
            None,
            own,
            400,
        ),
        (
            "unsupported version",
            Method::GET,
            "/v2/catalog",
            Some("1.0"),
            own,
            412,
        ),
        (
            "missing instance",
            Method::GET,
            &instance,
            Some("2.17"),
            own,
            404,
        ),
    ];
    for (what, method, path, version, password, status) in cases {
        let rid = fresh_id();
        let mut req = c
            .raw(method, path)
            .basic_auth(&c.target.username, Some(password))
            .header("X-Broker-API-Request-Identity", &rid)
            .header(
                "X-Broker-API-Originating-Identity",
                "cloudfoundry eyJ1c2VyX2lkIjogIjEyMyJ9",
            );
        if let Some(version) = version {
            req = req.header("X-Broker-API-Version", version);
        }
        let reply = Client::finish(req).await?;
        expect(&reply, status, what)?;
        let echoed = reply
            .headers
            .get("X-Broker-API-Request-Identity")
            .and_then(|v| v.to_str().ok());
        ensure!(
            echoed == Some(rid.as_str()),
            "{what}: request identity not echoed: {echoed:?}"
        );
    }
    Ok(())
}

async fn catalog_lists_the_service(c: &Client) -> anyhow::Result<()> {
    let reply = c.send(Method::GET, "/v2/catalog", None).await?;
    expect(&reply, 200, "catalog")?;
    let services = reply.body["services"]
        .as_array()
        .context("services is not an array")?;
    let service = services
        .iter()
        .find(|s| s["id"] == c.target.service_id.as_str())
        .context("catalog lacks the target service")?;
    for field in ["name", "description", "bindable", "plans"] {
        ensure!(
            service.get(field).is_some(),
            "service lacks required field {field}"
        );
    }
    let plans = service["plans"]
        .as_array()
        .context("plans is not an array")?;
    ensure!(
        plans.iter().any(|p| p["id"] == c.target.plan_id.as_str()),
        "catalog lacks the target plan"
    );
    Ok(())
}

/// ETag and Last-Modified on the catalog; a matching If-None-Match or If-Modified-Since is
/// answered 304 without a body.
async fn catalog_answers_conditional_requests(c: &Client) -> anyhow::Result<()> {
    let first = c.send(Method::GET, "/v2/catalog", None).await?;
    expect(&first, 200, "catalog")?;
    let header = |name: &str| {
        first
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .with_context(|| format!("catalog answer lacks {name}"))
    };
    let (etag, modified) = (header("etag")?, header("last-modified")?);
    let conditional = |name: &'static str, value: String| {
        Client::finish(
            c.raw(Method::GET, "/v2/catalog")
                .basic_auth(&c.target.username, Some(&c.target.password))
                .header("X-Broker-API-Version", "2.17")
                .header(name, value),
        )
    };
    let same = conditional("If-None-Match", etag.clone()).await?;
    expect(&same, 304, "catalog with a matching If-None-Match")?;
    ensure!(same.body.is_null(), "304 with a body: {}", same.body);
    let since = conditional("If-Modified-Since", modified).await?;
    expect(
        &since,
        304,
        "catalog with If-Modified-Since its Last-Modified",
    )?;
    let other = conditional("If-None-Match", "\"something-else\"".into()).await?;
    expect(&other, 200, "catalog with another entity tag")?;
    ensure!(
        other.body == first.body,
        "the catalog changed between two requests"
    );
    Ok(())
}

async fn full_lifecycle_is_idempotent(c: &Client) -> anyhow::Result<()> {
    let (id, bid, plan) = (fresh_id(), fresh_id(), c.target.plan_id.clone());
    let body = c.provision_body(&plan);
    let first = c.provision(&id, &body, false).await?;
    expect(&first, 201, "first provision")?;
    let again = c.provision(&id, &body, false).await?;
    expect(&again, 200, "identical provision repeated")?;
    ensure!(
        again.body == first.body,
        "repeated provision body differs: {} vs {}",
        again.body,
        first.body
    );

    let fetched = c.fetch_instance(&id).await?;
    expect(&fetched, 200, "fetch instance")?;
    ensure!(
        fetched.body["plan_id"] == plan.as_str(),
        "fetched instance has plan {}",
        fetched.body["plan_id"]
    );
    ensure!(
        fetched.body["service_id"] == c.target.service_id.as_str(),
        "fetched instance has wrong service_id"
    );

    let last = c.instance_last_operation(&id, None).await?;
    expect(&last, 200, "last_operation after provision")?;
    let unknown = c.instance_last_operation(&id, Some(&fresh_id())).await?;
    expect_error(
        &unknown,
        400,
        None,
        "last_operation of an unknown operation",
    )?;
    ensure!(
        last.body["state"] == "succeeded",
        "last_operation state {}",
        last.body["state"]
    );

    let bind_body = c.bind_body(&plan);
    let bound = c.bind(&id, &bid, &bind_body, false).await?;
    expect(&bound, 201, "first bind")?;
    ensure!(
        bound.body["credentials"].is_object(),
        "bind returned no credentials: {}",
        bound.body
    );
    let rebound = c.bind(&id, &bid, &bind_body, false).await?;
    expect(&rebound, 200, "identical bind repeated")?;
    ensure!(
        rebound.body["credentials"] == bound.body["credentials"],
        "repeated bind returned other credentials"
    );
    let got = c.fetch_binding(&id, &bid).await?;
    expect(&got, 200, "fetch binding")?;
    ensure!(
        got.body["credentials"] == bound.body["credentials"],
        "fetched binding has other credentials"
    );

    // The spec's bodies for these answers are `{}`.
    let empty = |reply: &Reply, what: &str| {
        ensure!(
            reply.body == json!({}),
            "{what}: body must be {{}}, got {}",
            reply.body
        );
        Ok(())
    };
    let noop = c
        .update(&id, &json!({"service_id": c.target.service_id}), false)
        .await?;
    expect(&noop, 200, "update that changes nothing")?;
    empty(&noop, "update that changes nothing")?;
    let unbound = c.unbind(&id, &bid, &plan, false).await?;
    expect(&unbound, 200, "unbind")?;
    empty(&unbound, "unbind")?;
    let again = c.unbind(&id, &bid, &plan, false).await?;
    expect(&again, 410, "unbind repeated")?;
    empty(&again, "unbind repeated")?;
    expect(
        &c.fetch_binding(&id, &bid).await?,
        404,
        "fetch of an unbound binding",
    )?;
    let gone = c.deprovision(&id, &plan, false).await?;
    expect(&gone, 200, "deprovision")?;
    empty(&gone, "deprovision")?;
    let again = c.deprovision(&id, &plan, false).await?;
    expect(&again, 410, "deprovision repeated")?;
    empty(&again, "deprovision repeated")?;
    expect(
        &c.fetch_instance(&id).await?,
        404,
        "fetch of a deprovisioned instance",
    )?;
    for operation in [None, Some(fresh_id())] {
        let last = c.instance_last_operation(&id, operation.as_deref()).await?;
        ensure!(
            last.status == 404 || last.status == 410,
            "last_operation ({operation:?}) of a deleted instance: expected 404 or 410, got {} {}",
            last.status,
            last.body
        );
    }
    Ok(())
}

/// Waits out a 202 (polling `last_operation`); anything else must be `sync_status`.
async fn settle(
    c: &Client,
    reply: &Reply,
    id: &str,
    bid: Option<&str>,
    sync_status: u16,
    what: &str,
) -> anyhow::Result<()> {
    if reply.status == 202 {
        let last = c.poll(id, bid, reply.operation().as_deref()).await?;
        ensure!(
            last.status == 410 || last.body["state"] == "succeeded",
            "{what}: ended {} {}",
            last.status,
            last.body
        );
        return Ok(());
    }
    expect(reply, sync_status, what)
}

/// Clients generated from the OSB OpenAPI document send every optional object, empty, and
/// empty optional query values: the spec's shapes allow it, so the whole lifecycle must work.
async fn generated_client_bodies_run_the_whole_lifecycle(c: &Client) -> anyhow::Result<()> {
    let plan = c.target.plan_id.clone();
    let service = c.target.service_id.clone();
    for accepts in [true, false] {
        let (id, bid) = (fresh_id(), fresh_id());
        let provision = json!({
            "service_id": service, "plan_id": plan,
            "organization_guid": "org-guid", "space_guid": "space-guid",
            "context": {}, "parameters": {}, "maintenance_info": {},
        });
        let reply = c.provision(&id, &provision, accepts).await?;
        if !accepts && reply.status == 422 && reply.error() == Some("AsyncRequired") {
            continue; // an asynchronous plan: the round with accepts_incomplete covers it
        }
        settle(
            c,
            &reply,
            &id,
            None,
            201,
            "provision with empty optional objects",
        )
        .await?;
        expect(&c.fetch_instance(&id).await?, 200, "fetch instance")?;
        let last = c
            .send(
                Method::GET,
                &format!("/v2/service_instances/{id}/last_operation?operation="),
                None,
            )
            .await?;
        expect(&last, 200, "last_operation with an empty operation")?;
        let update = json!({
            "service_id": service, "plan_id": plan,
            "context": {}, "parameters": {}, "maintenance_info": {},
            "previous_values": {"maintenance_info": {}},
        });
        let reply = c.update(&id, &update, accepts).await?;
        settle(
            c,
            &reply,
            &id,
            None,
            200,
            "update with empty optional objects",
        )
        .await?;
        let bind = json!({
            "service_id": service, "plan_id": plan,
            "context": {}, "bind_resource": {}, "parameters": {},
        });
        let reply = c.bind(&id, &bid, &bind, accepts).await?;
        settle(
            c,
            &reply,
            &id,
            Some(&bid),
            201,
            "bind with empty optional objects",
        )
        .await?;
        expect(&c.fetch_binding(&id, &bid).await?, 200, "fetch binding")?;
        let reply = c.unbind(&id, &bid, &plan, accepts).await?;
        settle(c, &reply, &id, Some(&bid), 200, "unbind").await?;
        let reply = c.deprovision(&id, &plan, accepts).await?;
        settle(c, &reply, &id, None, 200, "deprovision").await?;
    }
    Ok(())
}

async fn conflicting_repeats_return_409(c: &Client) -> anyhow::Result<()> {
    let (id, bid, plan) = (fresh_id(), fresh_id(), c.target.plan_id.clone());
    c.provision_ready(&id, &plan).await?;
    let mut other = c.provision_body(&plan);
    other["space_guid"] = json!("another-space");
    expect_error(
        &c.provision(&id, &other, true).await?,
        409,
        None,
        "provision with other attributes",
    )?;
    c.bind_ready(&id, &bid, &plan).await?;
    let mut other_bind = c.bind_body(&plan);
    other_bind["bind_resource"]["app_guid"] = json!("another-app");
    expect_error(
        &c.bind(&id, &bid, &other_bind, true).await?,
        409,
        None,
        "bind with other attributes",
    )?;
    c.unbind_done(&id, &bid, &plan).await?;
    c.deprovision_done(&id, &plan).await
}

async fn malformed_requests_return_400_with_error_body(c: &Client) -> anyhow::Result<()> {
    let (id, plan) = (fresh_id(), c.target.plan_id.clone());
    let mut body = c.provision_body(&plan);
    body["service_id"] = json!("no-such-service");
    expect_error(
        &c.provision(&id, &body, true).await?,
        400,
        None,
        "unknown service_id",
    )?;
    let mut body = c.provision_body(&plan);
    body["plan_id"] = json!("no-such-plan");
    expect_error(
        &c.provision(&id, &body, true).await?,
        400,
        None,
        "unknown plan_id",
    )?;
    let mut body = c.provision_body(&plan);
    body.as_object_mut().unwrap().remove("plan_id");
    let reply = c.provision(&id, &body, true).await?;
    expect_error(&reply, 400, None, "missing plan_id")?;
    ensure!(
        reply.body["description"]
            .as_str()
            .unwrap_or("")
            .contains("plan_id"),
        "description does not name plan_id: {}",
        reply.body
    );
    let raw = Client::finish(
        c.raw(Method::PUT, &format!("/v2/service_instances/{id}"))
            .basic_auth(&c.target.username, Some(&c.target.password))
            .header("X-Broker-API-Version", "2.17")
            .header("Content-Type", "application/json")
            .body("{not json"),
    )
    .await?;
    expect_error(&raw, 400, None, "malformed JSON")?;
    // Spec, "Content Type": a request refused for a mismatched Content-Type is a 400.
    let text = Client::finish(
        c.raw(Method::PUT, &format!("/v2/service_instances/{id}"))
            .basic_auth(&c.target.username, Some(&c.target.password))
            .header("X-Broker-API-Version", "2.17")
            .header("Content-Type", "text/plain")
            .body(c.provision_body(&plan).to_string()),
    )
    .await?;
    expect_error(&text, 400, None, "a JSON body sent as text/plain")?;
    let huge = json!({"service_id": c.target.service_id, "plan_id": plan, "organization_guid": "o",
        "space_guid": "s", "parameters": {"blob": "x".repeat(2 * 1024 * 1024)}});
    expect_error(
        &c.provision(&id, &huge, true).await?,
        413,
        None,
        "oversized body",
    )?;
    for bad in ["a'b", "a%60b", "a;b", "%00", &"a".repeat(300), "%C3%BC"] {
        let reply = c.provision(bad, &c.provision_body(&plan), true).await?;
        expect_error(&reply, 400, None, &format!("instance id {bad:?}"))?;
    }
    let mut stale = c.provision_body(&plan);
    stale["maintenance_info"] = json!({"version": "99.99.99-never"});
    expect_error(
        &c.provision(&id, &stale, true).await?,
        422,
        Some("MaintenanceInfoConflict"),
        "provision with a stale maintenance_info",
    )?;
    let reply = c
        .send(
            Method::PUT,
            &format!("/v2/service_instances/{id}?accepts_incomplete=maybe"),
            Some(&c.provision_body(&plan)),
        )
        .await?;
    expect_error(&reply, 400, None, "accepts_incomplete=maybe")?;
    let reply = c.send(Method::POST, "/v2/catalog", None).await?;
    expect_error(&reply, 405, None, "POST on the catalog")?;
    // An instance's routes share one scope: what they do not serve still gets an OSB body.
    let binding = format!("/v2/service_instances/{id}/service_bindings/{}", fresh_id());
    let reply = c.send(Method::PATCH, &binding, None).await?;
    expect_error(&reply, 405, None, "PATCH on a binding")?;
    let last_operation = format!("/v2/service_instances/{id}/last_operation");
    let reply = c.send(Method::POST, &last_operation, None).await?;
    expect_error(&reply, 405, None, "POST on last_operation")?;
    for path in [
        format!("/v2/service_instances/{id}/"),
        format!("/v2/service_instances/{id}/service_bindings"),
        format!("{binding}/"),
        format!("/v2/service_instances/{id}/nowhere"),
    ] {
        let reply = c.send(Method::GET, &path, None).await?;
        expect_error(&reply, 404, None, &format!("GET {path}"))?;
    }
    let reply = c
        .send(Method::DELETE, &format!("/v2/service_instances/{id}"), None)
        .await?;
    expect_error(
        &reply,
        400,
        None,
        "deprovision without service_id and plan_id",
    )?;
    expect(
        &c.fetch_instance(&id).await?,
        404,
        "no instance after refused requests",
    )
}

async fn missing_resources_return_404_or_410(c: &Client) -> anyhow::Result<()> {
    let (id, bid, plan) = (fresh_id(), fresh_id(), c.target.plan_id.clone());
    expect_error(
        &c.fetch_instance(&id).await?,
        404,
        None,
        "fetch of an unknown instance",
    )?;
    expect_error(
        &c.instance_last_operation(&id, None).await?,
        404,
        None,
        "last_operation of an unknown instance",
    )?;
    expect(
        &c.deprovision(&id, &plan, false).await?,
        410,
        "deprovision of an unknown instance",
    )?;
    expect_error(
        &c.bind(&id, &bid, &c.bind_body(&plan), false).await?,
        404,
        None,
        "bind to an unknown instance",
    )?;
    expect(
        &c.unbind(&id, &bid, &plan, false).await?,
        410,
        "unbind on an unknown instance",
    )?;
    c.provision_ready(&id, &plan).await?;
    expect_error(
        &c.fetch_binding(&id, &bid).await?,
        404,
        None,
        "fetch of an unknown binding",
    )?;
    expect(
        &c.unbind(&id, &bid, &plan, false).await?,
        410,
        "unbind of an unknown binding",
    )?;
    expect_error(
        &c.binding_last_operation(&id, &bid, None).await?,
        404,
        None,
        "last_operation of an unknown binding",
    )?;
    c.deprovision_done(&id, &plan).await
}

async fn identical_concurrent_requests_act_once(c: &Client) -> anyhow::Result<()> {
    let (id, bid, plan) = (fresh_id(), fresh_id(), c.target.plan_id.clone());
    let n = c.target.race_width.max(2);
    let body = c.provision_body(&plan);
    let replies = join_all((0..n).map(|_| c.provision(&id, &body, false))).await;
    let replies: Vec<Reply> = replies.into_iter().collect::<Result<_, _>>()?;
    let created = replies.iter().filter(|r| r.status == 201).count();
    ensure!(
        created == 1,
        "{created} of {n} identical provisions answered 201: {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    ensure!(
        replies.iter().all(|r| r.status == 201 || r.status == 200),
        "statuses {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    ensure!(
        replies.iter().all(|r| r.body == replies[0].body),
        "identical provisions answered different bodies: {:?}",
        replies.iter().map(|r| &r.body).collect::<Vec<_>>()
    );

    let bind_body = c.bind_body(&plan);
    let replies = join_all((0..n).map(|_| c.bind(&id, &bid, &bind_body, false))).await;
    let replies: Vec<Reply> = replies.into_iter().collect::<Result<_, _>>()?;
    let created = replies.iter().filter(|r| r.status == 201).count();
    ensure!(
        created == 1,
        "{created} of {n} identical binds answered 201: {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    ensure!(
        replies.iter().all(|r| r.status == 201 || r.status == 200),
        "bind statuses {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let credentials = &replies[0].body["credentials"];
    ensure!(
        credentials.is_object()
            && replies
                .iter()
                .all(|r| &r.body["credentials"] == credentials),
        "identical binds returned different (or no) credentials"
    );

    let replies = join_all((0..n).map(|_| c.unbind(&id, &bid, &plan, false))).await;
    let statuses: Vec<u16> = replies
        .into_iter()
        .map(|r| r.map(|r| r.status))
        .collect::<Result<_, _>>()?;
    ensure!(
        statuses.iter().filter(|s| **s == 200).count() == 1
            && statuses.iter().all(|s| *s == 200 || *s == 410),
        "concurrent unbinds: {statuses:?}"
    );
    let replies = join_all((0..n).map(|_| c.deprovision(&id, &plan, false))).await;
    let statuses: Vec<u16> = replies
        .into_iter()
        .map(|r| r.map(|r| r.status))
        .collect::<Result<_, _>>()?;
    ensure!(
        statuses.iter().filter(|s| **s == 200).count() == 1
            && statuses.iter().all(|s| *s == 200 || *s == 410),
        "concurrent deprovisions: {statuses:?}"
    );
    Ok(())
}

async fn plan_updates_follow_the_catalog(c: &Client) -> anyhow::Result<()> {
    let plan = c.target.plan_id.clone();
    if let Some(to) = c.target.update_plan_id.clone() {
        let id = fresh_id();
        c.provision_ready(&id, &plan).await?;
        let body = json!({"service_id": c.target.service_id, "plan_id": to, "previous_values": {"plan_id": plan}});
        let reply = c.update(&id, &body, true).await?;
        match reply.status {
            200 => {}
            202 => {
                let last = c.poll(&id, None, reply.operation().as_deref()).await?;
                ensure!(
                    last.body["state"] == "succeeded",
                    "update failed: {}",
                    last.body
                );
            }
            s => bail!("plan update answered {s}: {}", reply.body),
        }
        let fetched = c.fetch_instance(&id).await?;
        ensure!(
            fetched.body["plan_id"] == to.as_str(),
            "plan after update: {}",
            fetched.body["plan_id"]
        );
        // The instance now differs from the original request: re-sending it is a conflict.
        let original = c.provision(&id, &c.provision_body(&plan), true).await?;
        expect_error(
            &original,
            409,
            None,
            "the original provision after a plan change",
        )?;
        let bad = json!({"service_id": c.target.service_id, "plan_id": "no-such-plan"});
        expect_error(
            &c.update(&id, &bad, true).await?,
            400,
            None,
            "update to an unknown plan",
        )?;
        let mi = json!({"service_id": c.target.service_id, "maintenance_info": {"version": "99.99.99-never"}});
        expect_error(
            &c.update(&id, &mi, true).await?,
            422,
            Some("MaintenanceInfoConflict"),
            "update with a stale maintenance_info",
        )?;
        c.deprovision_done(&id, &to).await?;
    }
    let missing = json!({"service_id": c.target.service_id, "plan_id": plan});
    expect_error(
        &c.update(&fresh_id(), &missing, true).await?,
        404,
        None,
        "update of an unknown instance",
    )?;
    Ok(())
}

/// Spec: an update's `plan_id` is optional; an update with only a context keeps the plan
/// (and the parameters).
async fn updates_keep_the_plan_they_do_not_name(c: &Client) -> anyhow::Result<()> {
    let context = json!({"service_id": c.target.service_id,
        "context": {"platform": "cloudfoundry", "instance_name": "renamed"}});
    unnamed_stays(
        c,
        &context,
        &c.target.plan_id.clone(),
        "an update with only a context",
    )
    .await
}

/// Spec: an update's `parameters` are optional; a plan change without them keeps them.
async fn plan_changes_keep_the_parameters(c: &Client) -> anyhow::Result<()> {
    if c.target
        .provision_parameters
        .as_object()
        .is_none_or(|p| p.is_empty())
    {
        return Err(CannotRun("the target names no provision parameters to keep").into());
    }
    let Some(to) = c.target.update_plan_id.clone() else {
        return Err(CannotRun("the target names no plan to change to (update_plan_id)").into());
    };
    let body = json!({"service_id": c.target.service_id, "plan_id": to});
    unnamed_stays(c, &body, &to, "a plan change without parameters").await
}

/// Provisions with the target's parameters, sends `update`, and checks that the instance is
/// then on `plan` with the parameters it was provisioned with.
async fn unnamed_stays(c: &Client, update: &Value, plan: &str, what: &str) -> anyhow::Result<()> {
    let id = fresh_id();
    c.provision_ready(&id, &c.target.plan_id).await?;
    let before = c.fetch_instance(&id).await?;
    if before.status == 400 {
        c.deprovision_done(&id, &c.target.plan_id).await?;
        return Err(CannotRun("instances are not retrievable").into());
    }
    expect(&before, 200, "fetch after provision")?;
    let given = &c.target.provision_parameters;
    if given.as_object().is_some_and(|p| !p.is_empty()) {
        ensure!(
            before.body["parameters"] == *given,
            "fetch shows parameters {} after provisioning with {given}",
            before.body["parameters"]
        );
    }
    let reply = c.update(&id, update, true).await?;
    settle(c, &reply, &id, None, 200, what).await?;
    let after = c.fetch_instance(&id).await?;
    expect(&after, 200, &format!("fetch after {what}"))?;
    ensure!(
        after.body["plan_id"] == plan
            && after.body.get("parameters") == before.body.get("parameters"),
        "after {what}: plan {} parameters {:?}, expected plan {plan} parameters {:?}",
        after.body["plan_id"],
        after.body.get("parameters"),
        before.body.get("parameters")
    );
    c.deprovision_done(&id, plan).await
}

/// Spec: 422 "MUST be returned if the requested change is not supported".
async fn plan_changes_from_a_fixed_plan_are_refused(c: &Client) -> anyhow::Result<()> {
    let Some((fixed, other)) = c.target.fixed_plan.clone() else {
        return Err(CannotRun("the target names no plan that cannot change (fixed_plan)").into());
    };
    let id = fresh_id();
    c.provision_ready(&id, &fixed).await?;
    let body = json!({"service_id": c.target.service_id, "plan_id": other});
    expect_error(
        &c.update(&id, &body, true).await?,
        422,
        None,
        "plan change from a non-updateable plan",
    )?;
    c.deprovision_done(&id, &fixed).await
}

async fn parameters_are_validated_against_the_schema(c: &Client) -> anyhow::Result<()> {
    let Some(invalid) = c.target.invalid_parameters.clone() else {
        return Err(CannotRun("the target names no parameters a schema refuses").into());
    };
    let id = fresh_id();
    let mut body = c.provision_body(&c.target.plan_id);
    body["parameters"] = invalid;
    let reply = c.provision(&id, &body, true).await?;
    expect_error(
        &reply,
        400,
        None,
        "provision with parameters the schema refuses",
    )?;
    ensure!(
        reply.body["description"]
            .as_str()
            .unwrap_or("")
            .contains("parameters"),
        "description does not point at the parameters: {}",
        reply.body
    );
    expect(
        &c.fetch_instance(&id).await?,
        404,
        "no instance after refused parameters",
    )
}

async fn async_operations_follow_the_polling_rules(c: &Client) -> anyhow::Result<()> {
    let Some(plan) = c.target.async_plan_id.clone() else {
        return Err(CannotRun("the target names no asynchronous plan (async_plan_id)").into());
    };
    let (id, bid) = (fresh_id(), fresh_id());
    let body = c.provision_body(&plan);
    expect_error(
        &c.provision(&id, &body, false).await?,
        422,
        Some("AsyncRequired"),
        "async plan without accepts_incomplete",
    )?;
    let started = c.provision(&id, &body, true).await?;
    expect(&started, 202, "async provision")?;
    let op = started.operation().context("202 without operation")?;
    let repeated = c.provision(&id, &body, true).await?;
    expect(&repeated, 202, "async provision repeated while in progress")?;
    ensure!(
        repeated.operation().as_deref() == Some(op.as_str()),
        "repeated provision returned another operation"
    );
    let last = c.instance_last_operation(&id, Some(&op)).await?;
    expect(&last, 200, "last_operation while provisioning")?;
    ensure!(
        last.body["state"] == "in progress",
        "state while provisioning: {}",
        last.body
    );
    expect(
        &c.fetch_instance(&id).await?,
        404,
        "fetch while provisioning",
    )?;
    let patch = json!({"service_id": c.target.service_id, "parameters": {}});
    expect_error(
        &c.update(&id, &patch, true).await?,
        422,
        Some("ConcurrencyError"),
        "update while provisioning",
    )?;
    expect_error(
        &c.deprovision(&id, &plan, true).await?,
        422,
        Some("ConcurrencyError"),
        "deprovision while provisioning",
    )?;
    let done = c.poll(&id, None, Some(&op)).await?;
    ensure!(
        done.body["state"] == "succeeded",
        "async provision ended {}",
        done.body
    );

    // An empty `parameters` is no change; this is one (for a plan without an update schema).
    let change = json!({"service_id": c.target.service_id, "parameters": {"testkit_change": 1}});
    expect_error(
        &c.update(&id, &change, false).await?,
        422,
        Some("AsyncRequired"),
        "async update without accepts_incomplete",
    )?;
    let updating = c.update(&id, &change, true).await?;
    expect(&updating, 202, "async update")?;
    let uop = updating
        .operation()
        .context("202 update without operation")?;
    let again = c.update(&id, &change, true).await?;
    expect(
        &again,
        202,
        "identical async update repeated while in progress",
    )?;
    ensure!(
        again.operation().as_deref() == Some(uop.as_str()),
        "repeated update returned another operation"
    );
    let other = json!({"service_id": c.target.service_id, "parameters": {"other": true}});
    expect_error(
        &c.update(&id, &other, true).await?,
        422,
        Some("ConcurrencyError"),
        "another update while updating",
    )?;
    expect_error(
        &c.fetch_instance(&id).await?,
        422,
        Some("ConcurrencyError"),
        "fetch while updating",
    )?;
    expect_error(
        &c.bind(&id, &bid, &c.bind_body(&plan), true).await?,
        422,
        Some("ConcurrencyError"),
        "bind while the instance updates",
    )?;
    let done = c.poll(&id, None, Some(&uop)).await?;
    ensure!(
        done.body["state"] == "succeeded",
        "async update ended {}",
        done.body
    );

    expect_error(
        &c.bind(&id, &bid, &c.bind_body(&plan), false).await?,
        422,
        Some("AsyncRequired"),
        "async bind without accepts_incomplete",
    )?;
    let bound = c.bind(&id, &bid, &c.bind_body(&plan), true).await?;
    expect(&bound, 202, "async bind")?;
    ensure!(
        bound.body.get("credentials").is_none(),
        "202 bind must not carry credentials"
    );
    let bop = bound.operation().context("202 bind without operation")?;
    let rebound = c.bind(&id, &bid, &c.bind_body(&plan), true).await?;
    expect(&rebound, 202, "async bind repeated while in progress")?;
    ensure!(
        rebound.operation().as_deref() == Some(bop.as_str()),
        "repeated bind returned another operation"
    );
    expect_error(
        &c.unbind(&id, &bid, &plan, true).await?,
        422,
        Some("ConcurrencyError"),
        "unbind while binding",
    )?;
    expect_error(
        &c.deprovision(&id, &plan, true).await?,
        422,
        Some("ConcurrencyError"),
        "deprovision while a binding is busy",
    )?;
    expect(
        &c.fetch_binding(&id, &bid).await?,
        404,
        "fetch binding while binding",
    )?;
    let done = c.poll(&id, Some(&bid), Some(&bop)).await?;
    ensure!(
        done.body["state"] == "succeeded",
        "async bind ended {}",
        done.body
    );
    let got = c.fetch_binding(&id, &bid).await?;
    expect(&got, 200, "fetch binding after async bind")?;
    ensure!(
        got.body["credentials"].is_object(),
        "fetched binding has no credentials"
    );

    expect_error(
        &c.unbind(&id, &bid, &plan, false).await?,
        422,
        Some("AsyncRequired"),
        "async unbind without accepts_incomplete",
    )?;
    let unbound = c.unbind(&id, &bid, &plan, true).await?;
    expect(&unbound, 202, "async unbind")?;
    let uop = unbound
        .operation()
        .context("202 unbind without operation")?;
    let again = c.unbind(&id, &bid, &plan, true).await?;
    expect(&again, 202, "async unbind repeated while in progress")?;
    ensure!(
        again.operation().as_deref() == Some(uop.as_str()),
        "repeated unbind returned another operation"
    );
    expect(
        &c.poll(&id, Some(&bid), Some(&uop)).await?,
        410,
        "binding last_operation after async unbind",
    )?;

    expect_error(
        &c.deprovision(&id, &plan, false).await?,
        422,
        Some("AsyncRequired"),
        "async deprovision without accepts_incomplete",
    )?;
    let gone = c.deprovision(&id, &plan, true).await?;
    expect(&gone, 202, "async deprovision")?;
    let dop = gone
        .operation()
        .context("202 deprovision without operation")?;
    let again = c.deprovision(&id, &plan, true).await?;
    expect(&again, 202, "async deprovision repeated")?;
    ensure!(
        again.operation().as_deref() == Some(dop.as_str()),
        "repeated deprovision returned another operation"
    );
    expect(
        &c.poll(&id, None, Some(&dop)).await?,
        410,
        "last_operation after async deprovision",
    )?;
    Ok(())
}

/// Provision and bind, restart the broker (the closure returns the target afterwards, which
/// may listen elsewhere), then check that everything carries on from the state store.
pub async fn check_restart<F, Fut>(target: &Target, restart: F) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<Target>>,
{
    let c = Client::new(target.clone());
    let (id, bid, bid2, plan) = (fresh_id(), fresh_id(), fresh_id(), target.plan_id.clone());
    c.provision_ready(&id, &plan).await?;
    let credentials = c.bind_ready(&id, &bid, &plan).await?["credentials"].clone();
    let after = Client::new(restart().await?);
    let fetched = after.fetch_instance(&id).await?;
    expect(&fetched, 200, "fetch instance after restart")?;
    let got = after.fetch_binding(&id, &bid).await?;
    expect(&got, 200, "fetch binding after restart")?;
    ensure!(
        got.body["credentials"] == credentials,
        "credentials changed across the restart"
    );
    let rebound = after
        .bind(&id, &bid, &after.bind_body(&plan), false)
        .await?;
    expect(&rebound, 200, "identical bind repeated after restart")?;
    after.bind_ready(&id, &bid2, &plan).await?;
    after.unbind_done(&id, &bid, &plan).await?;
    after.unbind_done(&id, &bid2, &plan).await?;
    after.deprovision_done(&id, &plan).await
}

/// What one platform made is invisible to another served by the same broker, both ways.
pub async fn check_isolation(a: &Target, b: &Target) -> anyhow::Result<()> {
    hidden(a, b)
        .await
        .context("made on the first, seen from the second")?;
    hidden(b, a)
        .await
        .context("made on the second, seen from the first")?;
    let theirs = Client::new(Target {
        password: "wrong".into(),
        ..b.clone()
    });
    expect(
        &theirs.send(Method::GET, "/v2/catalog", None).await?,
        401,
        "wrong credentials on the other platform",
    )?;
    let crossed = Client::new(Target {
        username: a.username.clone(),
        password: a.password.clone(),
        ..b.clone()
    });
    expect(
        &crossed.send(Method::GET, "/v2/catalog", None).await?,
        401,
        "one platform's credentials on another's prefix",
    )?;
    Ok(())
}

/// Every route of the other platform answers as if `a`'s instance and binding did not exist.
async fn hidden(a: &Target, b: &Target) -> anyhow::Result<()> {
    let (ca, cb) = (Client::new(a.clone()), Client::new(b.clone()));
    let (id, bid, plan) = (fresh_id(), fresh_id(), a.plan_id.clone());
    ca.provision_ready(&id, &plan).await?;
    ca.bind_ready(&id, &bid, &plan).await?;
    let update = json!({"service_id": b.service_id, "plan_id": plan,
        "parameters": b.provision_parameters});
    for (reply, status, what) in [
        (cb.fetch_instance(&id).await?, 404, "fetches the instance"),
        (
            cb.fetch_binding(&id, &bid).await?,
            404,
            "fetches the binding",
        ),
        (
            cb.instance_last_operation(&id, None).await?,
            404,
            "polls the instance",
        ),
        (
            cb.binding_last_operation(&id, &bid, None).await?,
            404,
            "polls the binding",
        ),
        (
            cb.update(&id, &update, true).await?,
            404,
            "updates the instance",
        ),
        (cb.unbind(&id, &bid, &plan, false).await?, 410, "unbinds"),
        (
            cb.deprovision(&id, &plan, false).await?,
            410,
            "deprovisions",
        ),
        (
            cb.bind(&id, &fresh_id(), &cb.bind_body(&plan), false)
                .await?,
            404,
            "binds",
        ),
        (
            cb.provision(&id, &cb.provision_body(&plan), false).await?,
            409,
            "provisions the same id",
        ),
    ] {
        expect(&reply, status, &format!("the other platform {what}"))?;
    }
    let fetched = ca.fetch_binding(&id, &bid).await?;
    expect(
        &fetched,
        200,
        "the binding, after the other platform's attempts",
    )?;
    ca.unbind_done(&id, &bid, &plan).await?;
    ca.deprovision_done(&id, &plan).await
}

/// With the broker's backend down: `/ready` answers 503 (the target must be the broker's root,
/// no platform prefix), a bind of `refused_bid` on instance `id` and a new provision answer 503
/// naming `server` and never quoting `secret`, nothing of either is recorded, and `id` is still
/// served from the store.
pub async fn check_backend_down(
    target: &Target,
    id: &str,
    refused_bid: &str,
    server: &str,
    secret: &str,
) -> anyhow::Result<()> {
    let c = Client::new(target.clone());
    let plan = target.plan_id.clone();
    let ready = Client::finish(c.raw(Method::GET, "/ready")).await?;
    expect(&ready, 503, "/ready with the backend down")?;
    let other = fresh_id();
    for (reply, what) in [
        (
            c.bind(id, refused_bid, &c.bind_body(&plan), false).await?,
            "bind",
        ),
        (
            c.provision(&other, &c.provision_body(&plan), false).await?,
            "provision",
        ),
    ] {
        expect_error(&reply, 503, None, &format!("{what} with the backend down"))?;
        let said = reply.body["description"].as_str().unwrap_or("");
        ensure!(
            said.contains(server) && !said.contains(secret),
            "{what}: the 503 should name {server} and quote no secret: {said}"
        );
    }
    expect(
        &c.fetch_binding(id, refused_bid).await?,
        404,
        "the refused binding",
    )?;
    expect(
        &c.fetch_instance(&other).await?,
        404,
        "the refused instance",
    )?;
    expect(
        &c.fetch_instance(id).await?,
        200,
        "the instance, read from the store",
    )
}
