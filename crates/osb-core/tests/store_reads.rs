//! Lookups by key under concurrency (issue #14): on a network store the reads that arrive
//! together go out in one statement; each still gets its own row, or none, and every read
//! sees what was committed before it was asked. An orphan sweep reads thousands of keys at once
//! and still judges each object by its own row.

mod common;

use std::sync::Arc;

use common::*;
use futures::future::join_all;
use osb_core::orphans::{self, BackendObject, Owner};
use osb_core::store::{BindingRow, BindingState, OperationRow, Outcome, Start, Store, now_ms};
use osb_testkit::fresh_id;

/// Instances made, each with a binding.
const MADE: usize = 20;
/// Reads asked at once, of every batched kind (six), over the made ids and as many that do not
/// exist.
const READS: usize = 192;

fn binding_row(id: &str, instance: &str, op: &str) -> BindingRow {
    BindingRow {
        id: id.into(),
        instance_id: instance.into(),
        platform: "default".into(),
        service_id: SERVICE.into(),
        plan_id: PLAN.into(),
        fingerprint: "f".into(),
        state: BindingState::Binding.as_str().into(),
        operation_id: op.into(),
        parameters: "{}".into(),
        response: None,
        credentials: None,
        broker_state: "null".into(),
        created_at: 1,
        updated_at: 1,
    }
}

fn bind_operation(id: &str, instance: &str, binding: &str) -> OperationRow {
    OperationRow {
        binding_id: Some(binding.into()),
        kind: "bind".into(),
        ..operation_row(id, instance)
    }
}

/// What a read found, as the ids it names: the instance or binding and its operation.
type Found = Option<(String, Option<String>)>;

async fn lookups_get_their_own_rows(url: &str) {
    let store = Store::connect(url, 4).await.unwrap();
    let mut made = Vec::with_capacity(MADE);
    for _ in 0..MADE {
        let (id, op, bid, bop) = (fresh_id(), fresh_id(), fresh_id(), fresh_id());
        let operation = operation_row(&op, &id);
        assert!(
            store
                .start(&operation, Start::NewInstance(&instance_row(&id, &op)))
                .await
                .unwrap()
        );
        let binding = binding_row(&bid, &id, &bop);
        assert!(
            store
                .start(
                    &bind_operation(&bop, &id, &bid),
                    Start::NewBinding(&binding)
                )
                .await
                .unwrap()
        );
        made.push((id, op, bid, bop));
    }
    let before = store.counters().statements.get();
    let reads = (0..READS).map(|i| {
        let store = &store;
        // Every other read asks for an id that does not exist.
        let (id, op, bid, bop) = match &made[(i / 2) % MADE] {
            _ if i % 2 == 1 => (fresh_id(), fresh_id(), fresh_id(), fresh_id()),
            (id, op, bid, bop) => (id.clone(), op.clone(), bid.clone(), bop.clone()),
        };
        async move {
            let (found, expected): (Found, Found) = match i % 12 / 2 {
                0 => (
                    store
                        .instance_with_operation(&id)
                        .await
                        .unwrap()
                        .map(|(row, op)| (row.id, op.map(|o| o.id))),
                    Some((id, Some(op))),
                ),
                1 => (
                    store
                        .instance_with_facts(&id)
                        .await
                        .unwrap()
                        .map(|(row, facts)| (row.id, facts.map(|f| f.0))),
                    Some((id, None)),
                ),
                2 => (
                    store
                        .binding_with_operation(&bid)
                        .await
                        .unwrap()
                        .map(|(row, op)| (row.id, op.map(|o| o.id))),
                    Some((bid, Some(bop))),
                ),
                3 => (
                    store
                        .binding(&bid)
                        .await
                        .unwrap()
                        .map(|row| (row.id, Some(row.operation_id))),
                    Some((bid, Some(bop))),
                ),
                4 => (
                    store
                        .shown_binding(&bid)
                        .await
                        .unwrap()
                        .map(|row| (row.id, Some(row.instance_id))),
                    Some((bid, Some(id))),
                ),
                _ => (
                    store
                        .operation(&bop)
                        .await
                        .unwrap()
                        .map(|row| (row.id, row.binding_id)),
                    Some((bop, Some(bid))),
                ),
            };
            let expected = expected.filter(|_| i % 2 == 0);
            assert_eq!(found, expected, "{url}: read {i}");
        }
    });
    join_all(reads).await;
    let statements = store.counters().statements.get() - before;
    if url.starts_with("sqlite://") {
        // Reads run in place on SQLite: one statement each.
        assert_eq!(statements, READS as u64, "{url}");
    } else {
        // A kind's 32 keys fit one statement; turns that find the queue half filled send a few more.
        assert!(
            statements * 4 <= READS as u64,
            "{url}: {statements} statements for {READS} reads asked at once"
        );
    }
    // A read sees what was committed before it was asked: the binding, unbound and gone.
    let (id, _, bid, bop) = &made[0];
    let unbind = fresh_id();
    assert!(
        store
            .start(
                &OperationRow {
                    kind: "unbind".into(),
                    ..bind_operation(&unbind, id, bid)
                },
                Start::Binding {
                    id: bid,
                    from: &[BindingState::Binding],
                    to: BindingState::Unbinding,
                    previous: bop,
                },
            )
            .await
            .unwrap()
    );
    let reads = join_all((0..READS).map(|_| store.binding(bid))).await;
    assert!(
        reads.iter().all(
            |r| r.as_ref().unwrap().as_ref().unwrap().state == BindingState::Unbinding.as_str()
        ),
        "{url}"
    );
    assert!(
        store
            .succeed(&unbind, "replica-a/1", Outcome::DeleteBinding(bid))
            .await
            .unwrap()
    );
    let reads = join_all((0..READS).map(|_| store.binding_with_operation(bid))).await;
    assert!(reads.iter().all(|r| r.as_ref().unwrap().is_none()), "{url}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_asked_at_once_get_their_own_rows_on_every_store() {
    on_every_store(|url| async move { lookups_get_their_own_rows(&url).await }).await;
}

/// Instances with a row, each named by a backend object; as many objects again name instances
/// without one: together more keys than one statement takes.
const SWEPT: usize = 300;

/// An object named `{kind}-{id}`, marked for `id` on `platform` (a binding's when `parent` is
/// not empty).
fn marked(kind: &str, platform: &str, id: &str, parent: &str, created_at_ms: i64) -> BackendObject {
    let owner = Owner {
        platform,
        id,
        parent,
    };
    BackendObject::marked(kind, &format!("{kind}-{id}"), "here", owner, created_at_ms)
}

async fn a_sweep_judges_each_object_by_its_own_row(url: &str) {
    let store = Store::connect(url, 4).await.unwrap();
    let instance = |id: &str, created_at_ms| marked("database", "default", id, "", created_at_ms);
    let mut objects = Vec::new();
    let mut expected = Vec::new();
    let mut first = None;
    for _ in 0..SWEPT {
        let (id, op, lost) = (fresh_id(), fresh_id(), fresh_id());
        let made = Start::NewInstance(&instance_row(&id, &op));
        assert!(store.start(&operation_row(&op, &id), made).await.unwrap());
        objects.push(instance(&id, 1));
        objects.push(instance(&lost, 1));
        expected.push(format!("database-{lost}"));
        first.get_or_insert(id);
    }
    let first = first.unwrap();
    let (bid, bop, lost) = (fresh_id(), fresh_id(), fresh_id());
    let binding = binding_row(&bid, &first, &bop);
    let bind = bind_operation(&bop, &first, &bid);
    assert!(
        store
            .start(&bind, Start::NewBinding(&binding))
            .await
            .unwrap()
    );
    objects.push(marked("user", "default", &bid, &first, 1));
    objects.push(marked("user", "default", &lost, &first, 1));
    expected.push(format!("user-{lost}"));
    // The same id, but marked by another platform: not this row's.
    objects.push(BackendObject {
        name: "stranger".into(),
        ..marked("database", "other", &first, "", 1)
    });
    expected.push("stranger".into());
    // Too young to judge: left out, though nothing claims it.
    objects.push(instance(&fresh_id(), now_ms() + 60_000));
    objects.push(BackendObject::unmarked("database", "someone-elses", "here"));
    expected.push("someone-elses".into());

    let calls = Arc::new(Calls::default());
    *calls.objects.lock().unwrap() = objects.clone();
    let broker = FakeBroker {
        calls,
        upkeep_every: None,
    };
    let before = store.counters().statements.get();
    let sweep = orphans::find(&broker, &store, 0).await.unwrap();
    // 601 instance ids in two statements, two binding ids in one (and a connection's check).
    let statements = store.counters().statements.get() - before;
    assert!(statements <= 4, "{url}: {statements} statements");
    let mut found: Vec<String> = sweep
        .orphans
        .iter()
        .map(|o| o.object.name.clone())
        .collect();
    found.sort();
    expected.sort();
    assert_eq!(found, expected, "{url}");
    assert_eq!(sweep.marked, objects.len() - 1, "{url}");
    let unremovable: Vec<&str> = sweep
        .orphans
        .iter()
        .filter(|o| !o.removable)
        .map(|o| o.object.name.as_str())
        .collect();
    assert_eq!(unremovable, ["someone-elses"], "{url}");
    assert!(
        orphans::is_claimed(&store, &objects[0]).await.unwrap(),
        "{url}"
    );
    assert!(
        !orphans::is_claimed(&store, &objects[1]).await.unwrap(),
        "{url}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_judges_each_object_by_its_own_row_on_every_store() {
    on_every_store(|url| async move { a_sweep_judges_each_object_by_its_own_row(&url).await })
        .await;
}
