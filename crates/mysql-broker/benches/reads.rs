//! Reads under load (issue #14): `GET /v2/catalog`, `last_operation`, `GET` instance and `GET`
//! binding through mysql-broker, driven by wrk, on the default SQLite state store and on a
//! MariaDB one; each read's share of the catalog's rate; the same reads on a second broker whose
//! store holds 10,000 more instances and bindings, in turns with the first, `last_operation` of
//! 1,000 of them in turn, and a pass pruning old operation records over them; start to ready
//! and idle RSS.
//! `cargo bench -p mysql-broker --bench reads` (or `make bench`); needs the local MariaDB
//! (scripts/backends.sh) and wrk (scripts/bench-tools.sh). Prints figures; asserts nothing
//! about speed. Arguments `sqlite` or `mariadb` (after `--`) run that store's part alone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mysql_async::prelude::Queryable;
use osb_testkit::bench::{
    Load, WRK_CONNECTIONS, WRK_SECS, WRK_THREADS, goal, memory_goal, rounded, rss_kib, wrk,
    wrk_over,
};
use osb_testkit::{BrokerProcess, Client, free_port, fresh_id, start_broker};

const SERVICE: &str = "96b9e707-0e2b-47e3-a21a-fd01a8eb0452";
const PLAN1: &str = "411d0c3e-b086-4a24-b041-0aeef1a819d1";
const ADMIN: &str = "mysql://root@127.0.0.1:3306/mysql";

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/mysql-broker.toml")
}

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_mysql-broker"))
}

/// From spawning the binary to its first 200 on `/ready`, polled every 2 ms.
async fn start_to_ready(dir: &Path, store: &str) -> anyhow::Result<Duration> {
    let port = free_port();
    let started = Instant::now();
    let mut child = tokio::process::Command::new(binary())
        .arg("--config")
        .arg(deploy())
        .env("KPAAS_BROKER__LISTEN", format!("127.0.0.1:{port}"))
        .env("KPAAS_BROKER__STORE__URL", store)
        .env("KPAAS_BROKER__PASSWORD", osb_testkit::PASSWORD)
        .env("KPAAS_BROKER__ENCRYPTION_KEY", osb_testkit::ENCRYPTION_KEY)
        .env("RUST_LOG", "warn")
        .current_dir(dir)
        .kill_on_drop(true)
        .spawn()?;
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/ready");
    loop {
        if let Ok(r) = http.get(&url).send().await
            && r.status() == 200
        {
            let took = started.elapsed();
            child.kill().await?;
            return Ok(took);
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "not ready in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// [`wrk`] on `path`, and the state store statements the broker sent meanwhile, per request
/// (its background work's few included): issue #14 allows a read one at most.
async fn counted(
    broker: &BrokerProcess,
    path: &str,
    server: Option<u32>,
) -> anyhow::Result<(Load, f64)> {
    let statements = async || {
        broker
            .metric("osb_store_statements_total")
            .await?
            .0
            .context("the broker's /metrics shows no store statements")
    };
    let before = statements().await?;
    let load = wrk(broker, path, server)?;
    let per_request = (statements().await? - before) / load.requests;
    Ok((load, per_request))
}

/// Instances, and as many bindings, put in the store for the scale run.
const SCALE_ROWS: usize = 10_000;
/// Instances whose last operations are asked for in turn, after the scale run.
const SPREAD: usize = 1_000;

/// A finished operation's record on instance `id` (binding `binding`), kept with its row.
fn finished(id: &str, binding: Option<&str>) -> osb_core::store::OperationRow {
    osb_core::store::OperationRow {
        id: fresh_id(),
        platform: "default".into(),
        instance_id: id.into(),
        binding_id: binding.map(Into::into),
        kind: if binding.is_some() {
            "bind"
        } else {
            "provision"
        }
        .into(),
        state: osb_core::store::OperationState::Failed.as_str().into(),
        fingerprint: "f".into(),
        description: None,
        instance_usable: None,
        update_repeatable: None,
        owner: "bench".into(),
        heartbeat_at: 1,
        created_at: 1,
        updated_at: 1,
        runner: "bench/1".into(),
        request: None,
    }
}

/// [`SCALE_ROWS`] instances with a binding each, written straight to the store at `url` with
/// their operations' records, as failed provisions and binds (upkeep measures ready instances
/// on the backend; a finished operation is never run again). Returns the instances' ids.
async fn fill(url: &str) -> anyhow::Result<Vec<String>> {
    use futures::StreamExt;
    use osb_core::store::{BindingRow, BindingState, InstanceRow, InstanceState, Start, Store};
    let store = Store::connect(url, 8).await?;
    let store = &store;
    let results: Vec<anyhow::Result<String>> = futures::stream::iter(0..SCALE_ROWS)
        .map(|_| async move {
            let (id, bid) = (fresh_id(), fresh_id());
            let (provision, bind) = (finished(&id, None), finished(&id, Some(&bid)));
            let instance = InstanceRow {
                id: id.clone(),
                platform: "default".into(),
                service_id: SERVICE.into(),
                plan_id: PLAN1.into(),
                fingerprint: "f".into(),
                state: InstanceState::Failed.as_str().into(),
                operation_id: provision.id.clone(),
                parameters: "{}".into(),
                context: "{}".into(),
                maintenance_version: None,
                dashboard_url: None,
                metadata: None,
                broker_state: "null".into(),
                created_at: 1,
                updated_at: 1,
            };
            let made = store.start(&provision, Start::NewInstance(&instance));
            anyhow::ensure!(made.await?, "{id} exists");
            let binding = BindingRow {
                id: bid.clone(),
                instance_id: id.clone(),
                platform: "default".into(),
                service_id: SERVICE.into(),
                plan_id: PLAN1.into(),
                fingerprint: "f".into(),
                state: BindingState::Failed.as_str().into(),
                operation_id: bind.id.clone(),
                parameters: "{}".into(),
                response: None,
                credentials: None,
                broker_state: "null".into(),
                created_at: 1,
                updated_at: 1,
            };
            let made = store.start(&bind, Start::NewBinding(&binding));
            anyhow::ensure!(made.await?, "{bid} exists");
            Ok(id)
        })
        .buffer_unordered(8)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Rounds of the three reads, each between two catalog runs.
const READ_ROUNDS: usize = 3;

/// A broker on a store of its own, with an instance and a binding made through it to read.
struct Serving {
    broker: BrokerProcess,
    client: Client,
    id: String,
    bid: String,
    /// Its RSS once ready, before any request.
    idle_kib: Option<u64>,
    /// The catalog, then the three store reads: name and path.
    reads: [(&'static str, String); 4],
}

impl Serving {
    async fn start(dir: &Path, store: &str) -> anyhow::Result<Self> {
        let env = [
            ("KPAAS_BROKER__STORE__URL", store),
            ("RUST_LOG", "warn,osb_core::server=info"),
            // wrk shares the cores: unpinned, the scheduler at times puts both HTTP workers on
            // one core, and the catalog's p99 is then a time slice (osb_core::affinity).
            ("KPAAS_BROKER__PIN_WORKERS", "true"),
        ];
        let broker = start_broker(binary(), &deploy(), dir, &env, "/ready").await?;
        let idle_kib = rss_kib(broker.pid());
        let client = Client::new(broker.target(SERVICE, PLAN1));
        let (id, bid) = (fresh_id(), fresh_id());
        client.provision_ready(&id, PLAN1).await?;
        if let Err(e) = client.bind_ready(&id, &bid, PLAN1).await {
            // The instance goes; the bind's failure is the one to tell.
            let _ = client.deprovision_done(&id, PLAN1).await;
            return Err(e);
        }
        let reads = [
            ("catalog", "/v2/catalog".to_owned()),
            (
                "last_operation",
                format!("/v2/service_instances/{id}/last_operation"),
            ),
            ("GET instance", format!("/v2/service_instances/{id}")),
            (
                "GET binding",
                format!("/v2/service_instances/{id}/service_bindings/{bid}"),
            ),
        ];
        Ok(Self {
            broker,
            client,
            id,
            bid,
            idle_kib,
            reads,
        })
    }

    /// Each store read once, in order, with the store statements it sent.
    async fn round(&self, server: Option<u32>) -> anyhow::Result<Vec<(Load, f64)>> {
        let mut loads = Vec::with_capacity(self.reads.len() - 1);
        for (_, path) in &self.reads[1..] {
            loads.push(counted(&self.broker, path, server).await?);
        }
        Ok(loads)
    }

    /// Removes the binding and the instance from the backend: the instance is tried even when
    /// the unbind failed.
    async fn finish(self) -> anyhow::Result<()> {
        let unbound = self.client.unbind_done(&self.id, &self.bid, PLAN1).await;
        let removed = self.client.deprovision_done(&self.id, PLAN1).await;
        unbound.and(removed)
    }
}

/// A broker's CPU time per request, as the tables print it.
fn per_request(us: Option<f64>) -> String {
    us.map_or("-".into(), |us| format!("{us:.1}"))
}

/// One store's run: start to ready, then [`shares`] on a broker on `store` and [`scale`] against
/// a second one on `filled_store`. With the store server's `pid`, what it spent per request too.
/// `floor` is issue #14's share of the catalog's rate for each store read on this store.
async fn run(
    label: &str,
    [store, filled_store]: [&str; 2],
    server: Option<u32>,
    floor: f64,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // The first start on an empty store makes its tables; a restart, or another replica,
    // finds them.
    let first = start_to_ready(dir.path(), store).await?;
    let again = start_to_ready(dir.path(), store).await?;
    let empty = Serving::start(dir.path(), store).await?;
    // Whatever fails, the instance and binding made through the broker are removed.
    let measured = async {
        shares(label, &empty, store, [first, again], server, floor).await?;
        scale(label, &empty, filled_store, server).await
    }
    .await;
    measured.and(empty.finish().await)
}

/// Start to ready (`first` on an empty store, then `again`) and idle RSS, then [`READ_ROUNDS`]
/// rounds of wrk on each read of `empty`, with the catalog before and after each round. A
/// read's share in a round is of the mean of the catalog runs on either side (the rate of one
/// path moves by a fifth within minutes here), and its figure is its median round's.
async fn shares(
    label: &str,
    empty: &Serving,
    store: &str,
    [first, again]: [Duration; 2],
    server: Option<u32>,
    floor: f64,
) -> anyhow::Result<()> {
    let (broker, reads) = (&empty.broker, &empty.reads);
    let idle = empty.idle_kib;
    println!(
        "  state store: {label}; start to ready {:.0} ms (first start, making the tables: {:.0} ms); idle RSS {}",
        again.as_secs_f64() * 1000.0,
        first.as_secs_f64() * 1000.0,
        idle.map_or("unavailable".into(), |k| format!(
            "{:.1} MiB",
            k as f64 / 1024.0
        ))
    );
    // The goal is a start as a restart or another replica joining has it; a deployment's first
    // start makes the tables, once, and is printed beside it, not judged.
    let ms = rounded(again.as_secs_f64() * 1000.0, 0);
    goal(
        &format!("start to ready, {label} store"),
        &format!(
            "{ms:.0} ms (the first, making the tables: {:.0} ms)",
            first.as_secs_f64() * 1000.0
        ),
        "<= 50 ms",
        ms <= 50.0,
    )?;
    memory_goal(&format!("idle RSS, {label} store"), idle, 12.0)?;
    println!(
        "  {:<16} {:>10} {:>9} {:>9} {:>11} {:>12} {:>12} {:>10}  (the median round's run)",
        "request", "req/s", "p50 ms", "p99 ms", "of catalog", "broker µs", "server µs", "stmts/req"
    );
    // A run not counted first: a fresh broker's first run was a fifth below its later ones
    // (its code paged in, its allocator's arenas grown). Then rounds of the three reads, with
    // the catalog before, between and after them; wrk runs as a child process for WRK_SECS,
    // nothing else runs here meanwhile.
    wrk(broker, &reads[0].1, server)?;
    let mut catalogs = vec![wrk(broker, &reads[0].1, server)?];
    let mut rounds = Vec::with_capacity(READ_ROUNDS);
    for _ in 0..READ_ROUNDS {
        rounds.push(empty.round(server).await?);
        catalogs.push(wrk(broker, &reads[0].1, server)?);
    }
    let row = |name: &str, load: &Load, share: f64, statements: Option<f64>, shares: &str| {
        println!(
            "  {name:<16} {:>10.0} {:>9.2} {:>9.2} {:>10.0}% {:>12} {:>12} {:>10}  {shares}",
            load.requests_per_sec,
            load.p50_ms,
            load.p99_ms,
            100.0 * share,
            per_request(load.broker_cpu_us),
            per_request(load.server_cpu_us),
            statements.map_or("-".into(), |n| format!("{n:.2}")),
        );
    };
    // The catalog's row: its middle run by rate (of an even count, the lower one); every run's
    // rate follows.
    let mut by_rate: Vec<&Load> = catalogs.iter().collect();
    by_rate.sort_by(|a, b| a.requests_per_sec.total_cmp(&b.requests_per_sec));
    let runs: Vec<String> = catalogs
        .iter()
        .map(|load| format!("{:.0} (p99 {:.2})", load.requests_per_sec, load.p99_ms))
        .collect();
    let catalog = by_rate[(by_rate.len() - 1) / 2];
    row(
        reads[0].0,
        catalog,
        1.0,
        None,
        &format!("runs: {}", runs.join(", ")),
    );
    // A run's p99 is a time slice of a core wrk shares whenever the scheduler lets a wrk thread
    // run before a busy worker (0.3 to 5 ms between runs of one build), so the goal is judged on
    // the runs' median p99: of an even count the upper middle one, the worse.
    let mut p99s: Vec<f64> = catalogs.iter().map(|load| load.p99_ms).collect();
    p99s.sort_by(f64::total_cmp);
    let p99 = rounded(p99s[p99s.len() / 2], 3);
    goal(
        &format!("catalog p99, {label} store (the median of its runs')"),
        &format!(
            "{p99:.3} ms (runs' {:.2} to {:.2})",
            p99s[0],
            p99s[p99s.len() - 1]
        ),
        "< 2 ms",
        p99 < 2.0,
    )?;
    for (i, (name, _)) in reads[1..].iter().enumerate() {
        // Each read's share of the catalog runs on either side of its round.
        let mut shares: Vec<(f64, &(Load, f64))> = rounds
            .iter()
            .enumerate()
            .map(|(r, round)| {
                let catalog =
                    (catalogs[r].requests_per_sec + catalogs[r + 1].requests_per_sec) / 2.0;
                (round[i].0.requests_per_sec / catalog, &round[i])
            })
            .collect();
        shares.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (share, (load, statements)) = shares[(shares.len() - 1) / 2];
        let all: Vec<String> = shares
            .iter()
            .map(|(s, _)| format!("{:.0}%", 100.0 * s))
            .collect();
        row(
            name,
            load,
            share,
            Some(*statements),
            &format!("rounds: {}", all.join(", ")),
        );
        let percent = rounded(100.0 * share, 1);
        goal(
            &format!("{name}'s share of the catalog's rate, {label} store"),
            &format!("{percent:.1}% (median of {READ_ROUNDS} rounds)"),
            &format!(">= {:.0}%", 100.0 * floor),
            percent >= 100.0 * floor,
        )?;
        // A network store answers lookups that arrive together with one statement (batch.rs),
        // so only SQLite's count is of the read path's lookups; the broker's background work
        // (upkeep, leases) is counted in, a few dozen statements against a run's requests.
        if store.starts_with("sqlite:") {
            let most = rounded(rounds.iter().map(|r| r[i].1).fold(0.0, f64::max), 3);
            goal(
                &format!("store statements per {name}, {label} store"),
                &format!("{most:.3} (most of {READ_ROUNDS} rounds)"),
                "<= 1 (+1% for background work)",
                most <= 1.01,
            )?;
        }
    }
    Ok(())
}

/// The scale check: a second broker of the same build on a store of its own with the same
/// instance and binding to read, and 10,000 more of each. The two are measured in turns, each
/// going first in turn, as the lifecycle's two sides are: the machine's speed moves by a fifth
/// within minutes here, which rounds before and after a fill took for the store's.
async fn scale(
    label: &str,
    empty: &Serving,
    filled_store: &str,
    server: Option<u32>,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let full = Serving::start(dir.path(), filled_store).await?;
    // Whatever fails, its instance and binding are removed too.
    let measured = in_turns(label, empty, &full, filled_store, server).await;
    measured.and(full.finish().await)
}

/// [`scale`]'s measurements, `full` being the broker on `filled_store`, filled here.
async fn in_turns(
    label: &str,
    empty: &Serving,
    full: &Serving,
    filled_store: &str,
    server: Option<u32>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let filled = fill(filled_store).await?;
    println!(
        "  a second broker with {SCALE_ROWS} more instances and {SCALE_ROWS} more bindings in its store (written in {:.1} s), in turns with the first:",
        started.elapsed().as_secs_f64()
    );
    println!(
        "  {:<16} {:>10} {:>9} {:>11} {:>13}  (medians of {READ_ROUNDS} rounds each, against the empty store's)",
        "request", "req/s", "p50 ms", "p50 change", "req/s change"
    );
    // Its first round not counted: the first broker's store reads have run three rounds
    // already (their code paged in, the allocator's arenas grown, a network store's
    // connections opened and its statements prepared).
    full.round(server).await?;
    // One run's p50 moves by a fifth between two runs of one build here (it is the shape of
    // the latency spread at wrk's 10 µs steps), so each side is its rounds' median.
    let (mut empty_rounds, mut filled_rounds) = (Vec::new(), Vec::new());
    for turn in 0..READ_ROUNDS {
        if turn % 2 == 0 {
            empty_rounds.push(empty.round(server).await?);
            filled_rounds.push(full.round(server).await?);
        } else {
            filled_rounds.push(full.round(server).await?);
            empty_rounds.push(empty.round(server).await?);
        }
    }
    let median = |of: &[Vec<(Load, f64)>], i: usize, field: fn(&Load) -> f64| {
        let mut values: Vec<f64> = of.iter().map(|round| field(&round[i].0)).collect();
        values.sort_by(f64::total_cmp);
        values[(values.len() - 1) / 2]
    };
    for (i, (name, _)) in empty.reads[1..].iter().enumerate() {
        let p50 = |l: &Load| l.p50_ms;
        let rate = |l: &Load| l.requests_per_sec;
        let (p50_before, p50_after) = (
            median(&empty_rounds, i, p50),
            median(&filled_rounds, i, p50),
        );
        let (rate_before, rate_after) = (
            median(&empty_rounds, i, rate),
            median(&filled_rounds, i, rate),
        );
        let change = p50_after / p50_before - 1.0;
        println!(
            "  {name:<16} {rate_after:>10.0} {p50_after:>9.2} {:>+10.0}% {:>+12.0}%",
            100.0 * change,
            100.0 * (rate_after / rate_before - 1.0)
        );
        let percent = rounded(100.0 * change, 1);
        goal(
            &format!("{name} p50 with {SCALE_ROWS} instances and bindings, {label} store"),
            &format!("{percent:+.1}% of the empty store's"),
            "<= +20%",
            percent <= 20.0,
        )?;
    }
    // Pollers of many instances: each wrk thread asks for the next one's last operation.
    let spread: Vec<String> = filled[..SPREAD]
        .iter()
        .map(|id| format!("/v2/service_instances/{id}/last_operation"))
        .collect();
    // Its share of the same broker's catalog run just before it (the machine drifts).
    let catalog = wrk(&full.broker, &full.reads[0].1, server)?;
    let load = wrk_over(&full.broker, &spread, server)?;
    println!(
        "  last_operation of {SPREAD} instances in turn: {:.0} req/s ({:.0}% of its broker's catalog run just before), p50 {:.2} ms, p99 {:.2} ms, broker {} µs, server {} µs",
        load.requests_per_sec,
        100.0 * load.requests_per_sec / catalog.requests_per_sec,
        load.p50_ms,
        load.p99_ms,
        per_request(load.broker_cpu_us),
        per_request(load.server_cpu_us),
    );
    // The broker prunes old operation records every few minutes; over the filled store each
    // of its 20,000 records is a candidate (all finished long ago), and all stay (each is its
    // row's current one), so every check runs.
    let pruning = osb_core::store::Store::connect(filled_store, 1).await?;
    let started = Instant::now();
    let pruned = pruning.prune_operations(osb_core::store::now_ms()).await?;
    println!(
        "  pruning the filled store's old operation records: {:.0} ms, {pruned} removed",
        started.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    println!(
        "mysql-broker reads: wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS}, {WRK_SECS} s per request, {} cores, HTTP workers pinned (pin_workers)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // `cargo bench` passes its own flags (`--bench`); any other argument names a store.
    let stores: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |store: &str| stores.is_empty() || stores.iter().any(|s| s == store);
    if wanted("sqlite") {
        let (dir, filled) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let sqlite = osb_testkit::sqlite_store(dir.path());
        let sqlite_filled = osb_testkit::sqlite_store(filled.path());
        run("SQLite", [&sqlite, &sqlite_filled], None, 0.5).await?;
    }
    if !wanted("mariadb") {
        return Ok(());
    }
    let name = format!("kpaas_bench_state_{}", &fresh_id().replace('-', "")[..12]);
    let names = [name.clone(), format!("{name}_filled")];
    let pool = mysql_async::Pool::new(ADMIN);
    let mut admin = pool.get_conn().await?;
    // The server's process, to measure what a read costs it (it shares the cores).
    let pid_file: String = admin
        .query_first("SELECT @@pid_file")
        .await?
        .context("MariaDB names no pid file")?;
    let server = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("MariaDB's pid file {pid_file}"))?
        .trim()
        .parse()?;
    // Each database made is dropped again, whatever failed; the first failure is the answer.
    let mut made = Vec::new();
    let mut result = Ok(());
    for name in &names {
        match admin.query_drop(format!("CREATE DATABASE `{name}`")).await {
            Ok(()) => made.push(name),
            Err(e) => {
                result = Err(e.into());
                break;
            }
        }
    }
    if result.is_ok() {
        let [store, filled] = names
            .each_ref()
            .map(|n| format!("mysql://root@127.0.0.1:3306/{n}"));
        result = run("MariaDB", [&store, &filled], Some(server), 0.3).await;
    }
    for name in made {
        if let Err(e) = admin.query_drop(format!("DROP DATABASE `{name}`")).await {
            eprintln!("dropping the state store database {name}: {e}");
            result = result.and(Err(e.into()));
        }
    }
    result
}
