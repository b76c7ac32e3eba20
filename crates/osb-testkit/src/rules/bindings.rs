//! Rules about what a bind may carry: a predecessor to rotate, an app it needs.

use super::*;

/// The target service's plans from the catalog.
async fn plans(c: &Client) -> anyhow::Result<Vec<Value>> {
    let catalog = c.send(Method::GET, "/v2/catalog", None).await?;
    expect(&catalog, 200, "catalog")?;
    let services = catalog.body["services"].as_array().context("no services")?;
    let service = services
        .iter()
        .find(|s| s["id"] == c.target.service_id.as_str())
        .context("catalog lacks the target service")?;
    Ok(service["plans"].as_array().context("no plans")?.clone())
}

/// Binds and waits out a 202; the binding's body as a fetch returns it.
async fn bound(c: &Client, id: &str, bid: &str, body: &Value, what: &str) -> anyhow::Result<Value> {
    let reply = c.bind(id, bid, body, true).await?;
    settle(c, &reply, id, Some(bid), 201, what).await?;
    let fetched = c.fetch_binding(id, bid).await?;
    expect(&fetched, 200, &format!("fetch after {what}"))?;
    Ok(fetched.body)
}

/// Spec, "Binding Rotation": a plan with `binding_rotatable` takes `predecessor_binding_id`
/// (a live binding of the same instance), and both bindings "MUST both be valid in parallel";
/// the rotation body needs nothing but the predecessor. Other plans refuse it ("the Platform
/// MUST NOT attempt to rotate"), answered 400 as a request the spec does not allow.
pub(super) async fn binding_rotation_follows_the_plan(c: &Client) -> anyhow::Result<()> {
    let plans = plans(c).await?;
    let rotatable = |p: &&Value| p["binding_rotatable"] == true;
    let target = plans
        .iter()
        .find(|p| p["id"] == c.target.plan_id.as_str())
        .context("catalog lacks the target plan")?;
    if !rotatable(&target) {
        let (id, bid, plan) = (fresh_id(), fresh_id(), c.target.plan_id.clone());
        c.provision_ready(&id, &plan).await?;
        c.bind_ready(&id, &bid, &plan).await?;
        let mut body = c.bind_body(&plan);
        body["predecessor_binding_id"] = json!(bid);
        expect_error(
            &c.bind(&id, &fresh_id(), &body, true).await?,
            400,
            None,
            "rotation on a plan without binding_rotatable",
        )?;
        c.unbind_done(&id, &bid, &plan).await?;
        c.deprovision_done(&id, &plan).await?;
    }
    // The target plan when it rotates, else any plan of the service that does.
    let Some(plan) = std::iter::once(target)
        .chain(plans.iter())
        .find(rotatable)
        .and_then(|p| p["id"].as_str())
        .map(str::to_owned)
    else {
        return Err(CannotRun("no plan of the service has binding_rotatable").into());
    };
    let (id, other, first) = (fresh_id(), fresh_id(), fresh_id());
    c.provision_ready(&id, &plan).await?;
    c.provision_ready(&other, &plan).await?;
    let predecessor = c.bind_ready(&id, &first, &plan).await?;
    let (second, third) = (fresh_id(), fresh_id());
    let mut body = c.bind_body(&plan);
    body["predecessor_binding_id"] = json!(first);
    let successor = bound(c, &id, &second, &body, "rotation").await?;
    let minimal = json!({"predecessor_binding_id": second});
    bound(
        c,
        &id,
        &third,
        &minimal,
        "rotation with only the predecessor",
    )
    .await?;
    let still = c.fetch_binding(&id, &first).await?;
    expect(&still, 200, "the predecessor after its rotation")?;
    ensure!(
        still.body["credentials"] == predecessor["credentials"],
        "rotation changed the predecessor's credentials"
    );
    ensure!(
        successor["credentials"] != predecessor["credentials"],
        "the successor has the predecessor's credentials"
    );
    // Re-sent once made, as sent the first time: the same binding, also once its
    // predecessor is gone (a re-send is judged against the request, not the predecessor).
    expect(
        &c.bind(&id, &second, &body, true).await?,
        200,
        "a re-sent rotation",
    )?;
    for (predecessor, why) in [
        (fresh_id(), "an unknown predecessor"),
        (first.clone(), "a predecessor of another instance"),
    ] {
        let instance = if why.contains("another") { &other } else { &id };
        let mut body = c.bind_body(&plan);
        body["predecessor_binding_id"] = json!(predecessor);
        let rotated = fresh_id();
        expect_error(
            &c.bind(instance, &rotated, &body, true).await?,
            400,
            None,
            &format!("rotation from {why}"),
        )?;
        expect(
            &c.fetch_binding(instance, &rotated).await?,
            404,
            &format!("no binding after a rotation from {why}"),
        )?;
    }
    c.unbind_done(&id, &first, &plan).await?;
    expect(
        &c.bind(&id, &second, &body, true).await?,
        200,
        "a rotation re-sent after its predecessor was unbound",
    )?;
    expect(
        &c.bind(&id, &third, &minimal, true).await?,
        200,
        "a minimal rotation re-sent",
    )?;
    expect_error(
        &c.bind(&id, &fresh_id(), &body, true).await?,
        400,
        None,
        "a rotation from an unbound predecessor",
    )?;
    for bid in [&second, &third] {
        c.unbind_done(&id, bid, &plan).await?;
    }
    c.deprovision_done(&id, &plan).await?;
    c.deprovision_done(&other, &plan).await
}

/// Spec: 422 `RequiresApp` "MUST be returned if the Service Broker requires that `app_guid`
/// be included in the request body"; a refused bind leaves nothing, so the same binding id
/// binds once an app is named.
pub(super) async fn bindings_that_need_an_app_are_refused_without_one(
    c: &Client,
) -> anyhow::Result<()> {
    let Some(plan) = c.target.app_required_plan_id.clone() else {
        return Err(CannotRun("the target names no plan whose bindings need an app").into());
    };
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, &plan).await?;
    let mut body = c.bind_body(&plan);
    body.as_object_mut()
        .expect("an object")
        .remove("bind_resource");
    for accepts in [false, true] {
        let reply = c.bind(&id, &bid, &body, accepts).await?;
        expect_error(&reply, 422, Some("RequiresApp"), "bind without an app")?;
        expect(
            &c.fetch_binding(&id, &bid).await?,
            404,
            "no binding after RequiresApp",
        )?;
    }
    c.bind_ready(&id, &bid, &plan).await?;
    c.unbind_done(&id, &bid, &plan).await?;
    c.deprovision_done(&id, &plan).await
}
