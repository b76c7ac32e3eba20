//! Lookups by key under concurrency (issue #14): on a network store the reads that arrive
//! together go out in one statement; each still gets its own row, or none, and every read
//! sees what was committed before it was asked.

mod common;

use common::*;
use futures::future::join_all;
use osb_core::store::{BindingRow, BindingState, OperationRow, Outcome, Start, Store};
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
