//! The lifecycle benchmark every broker runs (`make bench`): provision + bind + unbind +
//! deprovision cycles through the broker, against the same backend commands sent straight to
//! the server (the limit), and the broker's peak RSS. Prints figures; asserts nothing about
//! speed.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Instant;

use futures::stream::{self, StreamExt};

use anyhow::Context as _;

use crate::{BrokerProcess, Client, PASSWORD, USERNAME, fresh_id, start_broker};

/// Cycles per run and how many run at once.
pub const CYCLES: usize = 200;
pub const CONCURRENCY: usize = 8;
/// Cycles of the run one at a time.
pub const CYCLES_ONE_AT_A_TIME: usize = 50;
/// Rounds at each concurrency. A rate moves by a fifth within minutes on a shared machine, so
/// the two sides alternate (each going first in turn) and the median round's ratio is the
/// figure.
pub const ROUNDS: usize = 5;

/// One cycle through the broker on `plan`.
pub async fn broker_cycle(c: &Client, plan: &str) -> anyhow::Result<()> {
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, plan).await?;
    c.bind_ready(&id, &bid, plan).await?;
    c.unbind_done(&id, &bid, plan).await?;
    c.deprovision_done(&id, plan).await
}

/// Runs [`CYCLES`] cycles, [`CONCURRENCY`] at a time; returns cycles per second. Fails when a
/// cycle fails: a rate of failures means nothing.
pub async fn rate<F, Fut>(cycle: F) -> anyhow::Result<f64>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    rate_of(CYCLES, CONCURRENCY, cycle).await
}

/// Runs `count` cycles, `width` at a time; returns cycles per second, as [`rate`] does.
pub async fn rate_of<F, Fut>(count: usize, width: usize, cycle: F) -> anyhow::Result<f64>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = stream::iter((0..count).map(|_| cycle()))
        .buffer_unordered(width)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let failed = results.iter().filter(|r| r.is_err()).count();
    if let Some(first) = results.into_iter().find_map(Result::err) {
        anyhow::bail!("{failed} cycles failed, the first: {first:#}");
    }
    Ok(count as f64 / elapsed.as_secs_f64())
}

/// Names the file `make bench` (scripts/bench.sh) collects the goals' lines in.
const GOALS_FILE: &str = "BENCH_GOALS";

/// A goal an issue sets (issue #14's, so far) as this run measured it: `what`, the figure
/// `measured`, the goal `wanted` and whether the figure meets it, a line appended to the file
/// `BENCH_GOALS` names, which `make bench` prints as its last table. `met` is to be decided on
/// the figure as printed ([`rounded`]): a 0.797 printed "0.80" beside a goal of 0.8, or a
/// 1.9996 printed "2.000" beside "< 2", would contradict its verdict. A benchmark run on its
/// own records nothing: it prints its figures anyway.
pub fn goal(what: &str, measured: &str, wanted: &str, met: bool) -> anyhow::Result<()> {
    match std::env::var_os(GOALS_FILE) {
        Some(file) => append_goal(Path::new(&file), what, measured, wanted, met),
        None => Ok(()),
    }
}

/// `x` rounded to `digits` decimals, as `format!("{x:.digits$}")` prints it.
pub fn rounded(x: f64, digits: usize) -> f64 {
    format!("{x:.digits$}").parse().unwrap_or(x)
}

/// A memory goal: `kib` (a `/proc` figure, unavailable off Linux) at most `mb` of the issue's
/// MB, judged in the MiB it is printed in.
pub fn memory_goal(what: &str, kib: Option<u64>, mb: f64) -> anyhow::Result<()> {
    let mib = kib.map(|kib| rounded(kib as f64 / 1024.0, 2));
    let limit = rounded(mb * 1e6 / 1048576.0, 2);
    goal(
        what,
        &mib.map_or("unavailable".into(), |mib| format!("{mib:.2} MiB")),
        &format!("<= {mb} MB ({limit:.2} MiB)"),
        mib.is_some_and(|mib| mib <= limit),
    )
}

fn append_goal(
    file: &Path,
    what: &str,
    measured: &str,
    wanted: &str,
    met: bool,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let fields = [what, measured, wanted];
    // The table's columns are split at tabs and its rows at newlines, and padded by awk's count
    // of each cell: mawk counts bytes.
    anyhow::ensure!(
        fields
            .iter()
            .all(|f| f.is_ascii() && !f.contains(['\t', '\n'])),
        "a goal's field holds a tab, a newline or more than ASCII: {fields:?}"
    );
    let line = format!(
        "{what}\t{measured}\t{wanted}\t{}\n",
        if met { "met" } else { "NOT MET" }
    );
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .with_context(|| format!("recording a goal in {}", file.display()))
}

/// Milliseconds of the `q`-quantile of sorted `times`.
pub fn quantile_ms(times: &[std::time::Duration], q: f64) -> f64 {
    let i = ((times.len() as f64 - 1.0) * q).round() as usize;
    times[i].as_secs_f64() * 1000.0
}

/// A `kB` figure of `/proc/<pid>/status` (Linux), in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
}

/// The peak resident set of process `pid` (Linux), in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM")
}

/// The resident set of process `pid` now (Linux), in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// CPU time process `pid` has used so far, all its threads (Linux), in seconds; readable for
/// another user's process too (e.g. a database server's).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: fields are counted after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let (user, system): (u64, u64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    Some((user + system) as f64 / clock_ticks()?)
}

/// The kernel's clock ticks per second, the unit of `/proc/<pid>/stat`'s times.
fn clock_ticks() -> Option<f64> {
    static TICKS: std::sync::OnceLock<Option<f64>> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let out = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    })
}

/// Cycles at one concurrency: straight to the backend and through the broker, per second, one
/// pair per round.
pub struct Run {
    pub cycles: usize,
    pub width: usize,
    pub rounds: Vec<(f64, f64)>,
}

impl Run {
    /// The rounds, lowest ratio first.
    fn by_ratio(&self) -> Vec<(f64, f64)> {
        let mut rounds = self.rounds.clone();
        rounds.sort_by(|(d1, t1), (d2, t2)| (t1 / d1).total_cmp(&(t2 / d2)));
        rounds
    }

    /// The ratios of the rounds, lowest first.
    fn ratios(&self) -> Vec<f64> {
        self.by_ratio().iter().map(|(d, t)| t / d).collect()
    }

    /// The round whose ratio is the median (the lower middle one of an even count).
    fn median(&self) -> (f64, f64) {
        let rounds = self.by_ratio();
        rounds[(rounds.len() - 1) / 2]
    }

    /// The figure of the run: the median round's ratio, through the broker to direct.
    pub fn ratio(&self) -> f64 {
        let (direct, through) = self.median();
        through / direct
    }
}

/// What one benchmark measured.
pub struct Figures<'a> {
    pub broker: &'a str,
    pub backend: &'a str,
    /// The state store's scheme (`sqlite`, `mysql`, `postgres`).
    pub store: String,
    pub runs: Vec<Run>,
    /// Store statements and commits per cycle through the broker, one at a time.
    pub statements_per_cycle: f64,
    pub commits_per_cycle: f64,
    pub peak_rss_kib: Option<u64>,
}

impl Figures<'_> {
    pub fn print(&self) {
        let Figures {
            broker, backend, ..
        } = self;
        println!(
            "{broker} cycles (provision + bind + unbind + deprovision), {} cores; state store: {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            self.store
        );
        println!(
            "  {:>6} {:>11} {:>16} {:>16} {:>8} {:>16}",
            "cycles", "concurrency", "direct/s", "through/s", "ratio", "rounds' ratios"
        );
        for run in &self.runs {
            let (direct, through) = run.median();
            let ratios: Vec<String> = run.ratios().iter().map(|r| format!("{r:.2}")).collect();
            println!(
                "  {:>6} {:>11} {:>16.1} {:>16.1} {:>8.2} {:>16}",
                run.cycles,
                run.width,
                direct,
                through,
                run.ratio(),
                ratios.join(" ")
            );
        }
        println!(
            "  (direct: the broker's {backend} commands sent straight; through: via {broker}; \
             of {ROUNDS} rounds, each side going first in turn, the round of the median ratio)"
        );
        println!(
            "  state store per cycle: {:.1} statements, {:.1} commits",
            self.statements_per_cycle, self.commits_per_cycle
        );
        match self.peak_rss_kib {
            Some(kib) => println!("  broker peak RSS: {:8.1} MiB", kib as f64 / 1024.0),
            None => println!("  broker peak RSS: unavailable"),
        }
    }
}

/// The state store a benchmark runs its broker on: `BENCH_STORE_URL`, or a SQLite file in `dir`.
pub fn store_url(dir: &Path) -> String {
    std::env::var("BENCH_STORE_URL").unwrap_or_else(|_| crate::sqlite_store(dir))
}

/// One benchmark run: starts the broker `binary` with `config` and `env` on a SQLite state store
/// (or `BENCH_STORE_URL`), runs `direct` cycles (the broker's own backend commands, straight to
/// the server) and cycles through the broker on `plan`; prints the figures and returns them.
#[allow(clippy::too_many_arguments)]
pub async fn compare<'a, F, Fut>(
    broker_name: &'a str,
    backend: &'a str,
    binary: &Path,
    config: &Path,
    env: &[(&str, &str)],
    service: &str,
    plan: &str,
    direct: F,
) -> anyhow::Result<Figures<'a>>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let dir = tempfile::tempdir()?;
    let store = store_url(dir.path());
    let mut env = env.to_vec();
    env.extend([
        ("KPAAS_BROKER__STORE__URL", store.as_str()),
        // Quiet, but for the listening line that tells the port.
        ("RUST_LOG", "warn,osb_core::server=info"),
    ]);
    let broker = start_broker(binary, config, dir.path(), &env, "/ready").await?;
    let client = Client::new(broker.target(service, plan));
    let store_counts = || async {
        let statements = broker.metric("osb_store_statements_total").await?.0;
        let commits = broker.metric("osb_store_commits_total").await?.0;
        statements
            .zip(commits)
            .context("the broker's /metrics shows no store counts")
    };
    // A broker that has served before, as one in production has: its pools and prepared
    // statements made, so that the first round does not pay for them.
    rate_of(CONCURRENCY, CONCURRENCY, || {
        let client = client.clone();
        async move { broker_cycle(&client, plan).await }
    })
    .await?;
    let mut runs = Vec::new();
    let mut counted = (0.0, 0.0);
    for (count, width) in [(CYCLES, CONCURRENCY), (CYCLES_ONE_AT_A_TIME, 1)] {
        let mut rounds = Vec::with_capacity(ROUNDS);
        for round in 0..ROUNDS {
            let through = async {
                let before = store_counts().await?;
                let rate = rate_of(count, width, || {
                    let client = client.clone();
                    async move { broker_cycle(&client, plan).await }
                })
                .await?;
                let after = store_counts().await?;
                if width == 1 {
                    // One at a time, so nothing of another cycle is counted (upkeep aside).
                    counted.0 += after.0 - before.0;
                    counted.1 += after.1 - before.1;
                }
                anyhow::Ok(rate)
            };
            rounds.push(if round % 2 == 0 {
                let direct = rate_of(count, width, &direct).await?;
                (direct, through.await?)
            } else {
                let through = through.await?;
                (rate_of(count, width, &direct).await?, through)
            });
        }
        runs.push(Run {
            cycles: count,
            width,
            rounds,
        });
    }
    let cycles = (CYCLES_ONE_AT_A_TIME * ROUNDS) as f64;
    let per_cycle = (counted.0 / cycles, counted.1 / cycles);
    let peak_rss_kib = peak_rss_kib(broker.pid());
    drop(broker);
    let figures = Figures {
        broker: broker_name,
        backend,
        store: store.split(':').next().unwrap_or("?").to_owned(),
        runs,
        statements_per_cycle: per_cycle.0,
        commits_per_cycle: per_cycle.1,
        peak_rss_kib,
    };
    figures.print();
    Ok(figures)
}

/// What wrk measured on one path.
pub struct Load {
    /// Requests answered in the run.
    pub requests: f64,
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The broker's CPU time per request, in microseconds: its own cost, which moves less
    /// than a rate from run to run when the load generator shares its cores.
    pub broker_cpu_us: Option<f64>,
    /// The same for the `server` process given to [`wrk`] (the broker's state store).
    pub server_cpu_us: Option<f64>,
}

/// wrk's threads and connections, and seconds per path.
pub const WRK_THREADS: u32 = 2;
pub const WRK_CONNECTIONS: u32 = 16;
pub const WRK_SECS: u32 = 5;

/// Drives `GET path` of `broker` with wrk (scripts/bench-tools.sh installs it), with the
/// broker's credentials and API version; fails when any answer is not a 2xx (a rate of errors
/// means nothing). Measures the CPU time of the broker, and of process `server` if given,
/// meanwhile.
pub fn wrk(broker: &BrokerProcess, path: &str, server: Option<u32>) -> anyhow::Result<Load> {
    wrk_over(broker, &[path.to_owned()], server)
}

/// [`wrk`] over several paths, as pollers of many instances ask: each wrk thread asks for them
/// in turn (a Lua script makes each request), the threads from points spread over the list.
pub fn wrk_over(
    broker: &BrokerProcess,
    paths: &[String],
    server: Option<u32>,
) -> anyhow::Result<Load> {
    use base64::Engine as _;
    anyhow::ensure!(!paths.is_empty(), "no path to drive");
    anyhow::ensure!(
        paths.iter().all(|p| p
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')),
        "a path to drive must be printable ASCII without quotes or backslashes"
    );
    let script = match paths {
        [_] => None,
        _ => {
            let script = tempfile::NamedTempFile::new()?;
            let quoted: Vec<String> = paths.iter().map(|p| format!("\"{p}\"")).collect();
            std::fs::write(
                script.path(),
                format!(
                    "paths = {{{}}}\nlocal threads = 0\nsetup = function(thread)\n  thread:set(\"i\", threads * math.floor(#paths / {WRK_THREADS}))\n  threads = threads + 1\nend\nrequest = function()\n  i = i % #paths + 1\n  return wrk.format(\"GET\", paths[i])\nend\n",
                    quoted.join(",")
                ),
            )?;
            Some(script)
        }
    };
    let path = &paths[0];
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USERNAME}:{PASSWORD}"));
    let cpu = |pid: Option<u32>| pid.and_then(cpu_secs);
    let before = (cpu(Some(broker.pid())), cpu(server));
    let out = std::process::Command::new("wrk")
        .arg(format!("-t{WRK_THREADS}"))
        .arg(format!("-c{WRK_CONNECTIONS}"))
        .arg(format!("-d{WRK_SECS}s"))
        .arg("--latency")
        .args(["-H", &format!("Authorization: Basic {auth}")])
        .args(["-H", "X-Broker-API-Version: 2.17"])
        .args(
            script
                .iter()
                .flat_map(|s| [OsStr::new("-s"), s.path().as_os_str()]),
        )
        .arg(format!("http://127.0.0.1:{}{path}", broker.port))
        .output()
        .context("wrk (run scripts/bench-tools.sh)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "wrk failed: {text}");
    anyhow::ensure!(
        !text.contains("Non-2xx") && !text.contains("Socket errors"),
        "{path}: errors under load: {text}"
    );
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key).map(str::trim))
            .with_context(|| format!("no {key:?} in wrk's output: {text}"))
    };
    let rate: f64 = field("Requests/sec:")?.parse()?;
    let requests = requests_in(&text)?;
    let per_request =
        |before: Option<f64>, pid| before.zip(cpu(pid)).map(|(a, b)| (b - a) * 1e6 / requests);
    Ok(Load {
        requests,
        requests_per_sec: rate,
        p50_ms: millis(field("50%")?)?,
        p99_ms: millis(field("99%")?)?,
        broker_cpu_us: per_request(before.0, Some(broker.pid())),
        server_cpu_us: per_request(before.1, server),
    })
}

/// The count of wrk's "585938 requests in 5.00s, 1.09GB read".
fn requests_in(text: &str) -> anyhow::Result<f64> {
    let count = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .with_context(|| format!("no request count in wrk's output: {text}"))?
        .0;
    Ok(count.parse()?)
}

/// wrk's `190.00us`, `3.40ms`, `1.02s` in milliseconds.
fn millis(text: &str) -> anyhow::Result<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        anyhow::bail!("{text:?} is no wrk latency");
    };
    Ok(number.parse::<f64>()? * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_resident_set_below_its_peak() {
        let (now, peak) = (
            rss_kib(std::process::id()),
            peak_rss_kib(std::process::id()),
        );
        assert!(now.is_some_and(|kib| kib > 0), "{now:?}");
        assert!(peak >= now, "{peak:?} < {now:?}");
    }

    #[test]
    fn this_process_has_used_cpu_time() {
        let start = cpu_secs(std::process::id()).expect("own /proc stat");
        let spun = std::time::Instant::now();
        let mut now = start;
        // Spins until the kernel has counted a clock tick of it, for 5 s at most.
        while now <= start && spun.elapsed() < std::time::Duration::from_secs(5) {
            std::hint::black_box((0..10_000u64).sum::<u64>());
            now = cpu_secs(std::process::id()).expect("own /proc stat");
        }
        assert!(now > start, "{start} -> {now} after spinning 5 s");
    }

    #[test]
    fn a_run_reports_the_round_of_the_median_ratio() {
        let run = Run {
            cycles: 10,
            width: 1,
            rounds: vec![(100.0, 90.0), (200.0, 100.0), (80.0, 60.0)],
        };
        assert_eq!(run.ratios(), [0.5, 0.75, 0.9]);
        assert_eq!(run.median(), (80.0, 60.0));
        assert_eq!(run.ratio(), 0.75);
        let even = Run {
            rounds: vec![(100.0, 90.0), (200.0, 100.0)],
            ..run
        };
        assert_eq!(even.median(), (200.0, 100.0), "the lower middle one");
    }

    #[test]
    fn goals_append_a_line_each_and_refuse_what_would_break_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("goals");
        append_goal(&file, "catalog p99", "1.45 ms", "< 2 ms", true).unwrap();
        append_goal(&file, "idle RSS", "12.5 MiB", "<= 12 MiB", false).unwrap();
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "catalog p99\t1.45 ms\t< 2 ms\tmet\nidle RSS\t12.5 MiB\t<= 12 MiB\tNOT MET\n"
        );
        for bad in ["a\tb", "a\nb", "\u{2264} 12 MiB"] {
            assert!(append_goal(&file, bad, "1", "2", true).is_err(), "{bad:?}");
        }
        assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 2);
    }

    #[test]
    fn figures_are_judged_as_printed() {
        assert_eq!(rounded(1.9996, 3), 2.0);
        assert_eq!(rounded(0.797, 2), 0.8);
        assert_eq!(rounded(0.797, 3), 0.797);
        assert_eq!(rounded(50.4, 0), 50.0);
    }

    #[test]
    fn quantiles_pick_from_sorted_times() {
        let times: Vec<std::time::Duration> =
            (1..=100).map(std::time::Duration::from_millis).collect();
        assert_eq!(quantile_ms(&times, 0.5), 51.0);
        assert_eq!(quantile_ms(&times, 0.99), 99.0);
    }

    #[test]
    fn wrk_latencies_read_in_milliseconds() {
        assert_eq!(millis("190.00us").unwrap(), 0.19);
        assert_eq!(millis("3.40ms").unwrap(), 3.4);
        assert_eq!(millis("1.02s").unwrap(), 1020.0);
        assert!(millis("3.4").is_err());
    }

    #[test]
    fn wrk_request_counts_read_from_its_summary() {
        let text = "  Latency Distribution\n     99%  1.45ms\n  585938 requests in 5.00s, 1.09GB read\nRequests/sec: 117187.60\n";
        assert_eq!(requests_in(text).unwrap(), 585_938.0);
        assert!(requests_in("Requests/sec: 1.0\n").is_err());
    }
}
