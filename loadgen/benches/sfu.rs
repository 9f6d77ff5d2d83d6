//! medrelay's SFU against Janus 1.1.2's VideoRoom, under identical load in one run.
//!
//! `bash bench/sfu.sh` runs this inside a network namespace with only `lo`. For each
//! scenario and server it starts the server fresh, puts the load generator's rooms on it
//! (`loadgen::run_observed`), samples the server process's CPU (user + system from
//! `/proc/PID/stat`) over the measured window and its resident memory, and repeats; it
//! prints the medians and the medrelay/Janus ratios, and writes them with two plots into
//! `docs/benchmarks.md` (between the `sfu-bench` markers) and `docs/img/`.
//!
//! Options (after `--`): `--runs N` (3), `--duration SECS` (15), `--steps 50,100,200,400`,
//! `--only medrelay|janus`, `--scenarios meeting,teaching,scale`, `--no-write`.

use loadgen::{Scenario, Sfu, Summary, TokenMinter, Window};
use plotters::prelude::*;
use signaling::token::{Role, Scope, TokenKeys};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

const MEDRELAY_ADDR: &str = "127.0.0.1:8080";
const JANUS_ADDR: &str = "127.0.0.1:8188";
const BEGIN: &str = "<!-- sfu-bench:begin -->";
const END: &str = "<!-- sfu-bench:end -->";

struct Options {
    runs: usize,
    duration: Duration,
    steps: Vec<usize>,
    servers: Vec<Sfu>,
    scenarios: Vec<String>,
    write: bool,
    root: PathBuf,
}

fn options() -> Options {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut o = Options {
        runs: 3,
        duration: Duration::from_secs(15),
        steps: vec![50, 100, 200, 400],
        servers: vec![Sfu::Medrelay, Sfu::Janus],
        scenarios: vec!["meeting".into(), "teaching".into(), "scale".into()],
        write: true,
        root,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--runs" => o.runs = value().parse().expect("--runs N"),
            "--duration" => o.duration = Duration::from_secs(value().parse().expect("secs")),
            "--steps" => {
                o.steps = value()
                    .split(',')
                    .map(|s| s.parse().expect("--steps 50,100"))
                    .collect()
            }
            "--only" => {
                o.servers = vec![match value().as_str() {
                    "medrelay" => Sfu::Medrelay,
                    "janus" => Sfu::Janus,
                    other => panic!("--only medrelay|janus, not {other}"),
                }]
            }
            "--scenarios" => o.scenarios = value().split(',').map(str::to_owned).collect(),
            "--no-write" => o.write = false,
            // cargo bench passes --bench.
            _ => {}
        }
    }
    o
}

/// A server under test.
struct Server {
    child: Child,
    data_dir: PathBuf,
}

impl Server {
    fn start(sfu: Sfu, work: &Path, root: &Path) -> Self {
        let _ = std::fs::remove_dir_all(work);
        std::fs::create_dir_all(work).expect("work dir");
        let log = std::fs::File::create(work.join("server.log")).expect("log");
        let (mut command, addr) = match sfu {
            Sfu::Medrelay => {
                let bin = std::env::var("MEDRELAY_BIN")
                    .unwrap_or_else(|_| root.join("target/release/medrelay").display().to_string());
                let mut c = Command::new(bin);
                c.args(["serve", "--listen", MEDRELAY_ADDR, "--data-dir"])
                    .arg(work.join("data"))
                    .env("MEDRELAY_LOG", "warn");
                (c, MEDRELAY_ADDR)
            }
            Sfu::Janus => {
                // start.sh ends in `exec janus`: the child is Janus itself.
                let mut c = Command::new("bash");
                c.arg(root.join("bench/janus/start.sh"))
                    .arg(work.join("janus"));
                (c, JANUS_ADDR)
            }
        };
        let child = command
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting the server");
        let addr: SocketAddr = addr.parse().expect("address");
        let deadline = Instant::now() + Duration::from_secs(120);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "{sfu:?} did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Server {
            child,
            data_dir: work.join("data"),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn minter(&self) -> TokenMinter {
        let Ok(secret) = std::fs::read_to_string(self.data_dir.join("signing.key")) else {
            return Arc::new(|_, _, _| String::new());
        };
        let keys = TokenKeys::new(&hex::decode(secret.trim()).expect("hex signing key"));
        Arc::new(move |room, identity, publishes| {
            let role = if publishes {
                Role::Clinic
            } else {
                Role::Observer
            };
            let ttl = Duration::from_secs(3600);
            keys.issue(&Scope::room(room), identity, role, ttl, SystemTime::now())
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU time of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    ticks as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Datagrams the kernel dropped at a process's UDP sockets because their receive buffers were
/// full: the `drops` column of `/proc/PID/net/udp` for the sockets among `/proc/PID/fd`.
fn socket_drops(pid: u32) -> u64 {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    std::fs::read_to_string(format!("/proc/{pid}/net/udp"))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let inode = fields.get(9)?;
            inodes
                .contains(*inode)
                .then(|| fields.last()?.parse::<u64>().ok())?
        })
        .sum()
}

/// One run's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    forwarded_pps: f64,
    expected_pps: f64,
    cpu_cores: f64,
    cpu_us_per_packet: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    rss_kib_per_subscriber: f64,
    lost: f64,
    server_drops: f64,
}

fn measure(
    sfu: Sfu,
    scenario: &Scenario,
    o: &Options,
    runtime: &tokio::runtime::Runtime,
) -> Figures {
    let work = o
        .root
        .join("target/sfu-bench")
        .join(format!("{sfu:?}").to_lowercase());
    let server = Server::start(sfu, &work, &o.root);
    let pid = server.pid();
    let idle_rss = rss_kib(pid);
    let samples = Arc::new(Mutex::new(Vec::new()));
    let seen = samples.clone();
    let summary: Summary = runtime
        .block_on(loadgen::run_observed(
            scenario,
            server.minter(),
            move |edge| {
                seen.lock().unwrap().push((
                    edge,
                    Instant::now(),
                    cpu_seconds(pid),
                    rss_kib(pid),
                    socket_drops(pid),
                ));
            },
        ))
        .unwrap_or_else(|e| panic!("{sfu:?} run failed: {e}"));
    drop(server);
    let samples = samples.lock().unwrap();
    let (start, end) = (
        samples
            .iter()
            .find(|s| s.0 == Window::Start)
            .expect("start"),
        samples.iter().find(|s| s.0 == Window::End).expect("end"),
    );
    let seconds = end.1.duration_since(start.1).as_secs_f64();
    let cpu = end.2 - start.2;
    let receivers = scenario.rooms * (scenario.publishers + scenario.subscribers);
    if summary.connected_peers < summary.expected_peers || summary.failed_peers > 0 {
        eprintln!(
            "  warning: {}/{} peers connected, {} failed",
            summary.connected_peers, summary.expected_peers, summary.failed_peers
        );
    }
    Figures {
        forwarded_pps: summary.received_pps,
        expected_pps: summary.expected_pps,
        cpu_cores: cpu / seconds,
        cpu_us_per_packet: cpu * 1e6 / (summary.received_pps * seconds).max(1.0),
        p50_us: summary.latency.p50_us as f64,
        p99_us: summary.latency.p99_us as f64,
        max_us: summary.latency.max_us as f64,
        rss_kib_per_subscriber: end.3.saturating_sub(idle_rss) as f64 / receivers as f64,
        lost: summary.lost_packets as f64,
        server_drops: end.4 as f64,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn medians(runs: &[Figures]) -> Figures {
    let m = |f: fn(&Figures) -> f64| median(runs.iter().map(f).collect());
    Figures {
        forwarded_pps: m(|f| f.forwarded_pps),
        expected_pps: m(|f| f.expected_pps),
        cpu_cores: m(|f| f.cpu_cores),
        cpu_us_per_packet: m(|f| f.cpu_us_per_packet),
        p50_us: m(|f| f.p50_us),
        p99_us: m(|f| f.p99_us),
        max_us: m(|f| f.max_us),
        rss_kib_per_subscriber: m(|f| f.rss_kib_per_subscriber),
        lost: m(|f| f.lost),
        server_drops: m(|f| f.server_drops),
    }
}

/// One scenario's row: its name, the number of receivers, and each server's medians.
struct Row {
    name: String,
    subscribers: usize,
    results: Vec<(Sfu, Figures)>,
}

fn scenarios(o: &Options) -> Vec<(String, Scenario)> {
    let base = |rooms, publishers, subscribers| Scenario {
        sfu: Sfu::Medrelay,
        server: MEDRELAY_ADDR.parse().unwrap(),
        rooms,
        publishers,
        subscribers,
        duration: o.duration,
        warmup: Duration::from_secs(3),
        join_rate: 50,
        video_kbps: 1_500,
        clip_dir: o.root.join("target/loadgen-clip"),
        progress: false,
    };
    let mut out = Vec::new();
    for name in &o.scenarios {
        match name.as_str() {
            "meeting" => out.push(("meeting 4×4".to_owned(), base(4, 4, 0))),
            "teaching" => out.push(("teaching 1→200".to_owned(), base(1, 1, 200))),
            "scale" => {
                for &n in &o.steps {
                    out.push((format!("scale 1→{n}"), base(1, 1, n)));
                }
            }
            other => panic!("unknown scenario {other}"),
        }
    }
    out
}

fn main() {
    let o = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = Vec::new();
    for (name, mut scenario) in scenarios(&o) {
        let mut row = Row {
            name: name.clone(),
            subscribers: scenario.subscribers,
            results: Vec::new(),
        };
        for &sfu in &o.servers {
            scenario.sfu = sfu;
            scenario.server = match sfu {
                Sfu::Medrelay => MEDRELAY_ADDR,
                Sfu::Janus => JANUS_ADDR,
            }
            .parse()
            .unwrap();
            let runs: Vec<Figures> = (0..o.runs)
                .map(|i| {
                    let f = measure(sfu, &scenario, &o, &runtime);
                    eprintln!("run {}: {}", i + 1, table_row(&name, sfu, &f));
                    f
                })
                .collect();
            row.results.push((sfu, medians(&runs)));
        }
        rows.push(row);
    }
    let table = table(&rows, o.runs, o.duration);
    println!("{table}");
    if o.write {
        let img = o.root.join("docs/img");
        std::fs::create_dir_all(&img).expect("docs/img");
        plot(
            &rows,
            &img.join("sfu-cpu-per-packet.png"),
            "CPU per forwarded packet (µs)",
            |f| f.cpu_us_per_packet,
        );
        plot(
            &rows,
            &img.join("sfu-latency-p99.png"),
            "Added latency p99 (µs)",
            |f| f.p99_us,
        );
        write_section(&o.root.join("docs/benchmarks.md"), &table);
    }
}

/// One server's figures as a row of the table (also printed after each run).
fn table_row(name: &str, sfu: Sfu, f: &Figures) -> String {
    format!(
        "| {name} | {sfu:?} | {:.0} ({:.0}) | {:.2} | {:.2} | {:.0} / {:.0} / {:.0} | {:.0} | {:.0} ({:.0}) |",
        f.forwarded_pps,
        f.expected_pps,
        f.cpu_cores,
        f.cpu_us_per_packet,
        f.p50_us,
        f.p99_us,
        f.max_us,
        f.rss_kib_per_subscriber,
        f.lost,
        f.server_drops
    )
}

fn figures(row: &Row, sfu: Sfu) -> Option<&Figures> {
    row.results.iter().find(|(s, _)| *s == sfu).map(|(_, f)| f)
}

fn table(rows: &[Row], runs: usize, duration: Duration) -> String {
    let mut t = format!(
        "Medians of {runs} runs of {} s each, server and load generator on the same 2 cores.\n\n\
         | scenario | SFU | forwarded pkt/s (expected) | server cores | CPU µs/pkt | latency p50 / p99 / max µs | RSS KiB/subscriber | lost (at the server's sockets) |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        duration.as_secs()
    );
    for row in rows {
        for (sfu, f) in &row.results {
            t.push_str(&table_row(&row.name, *sfu, f));
            t.push('\n');
        }
    }
    t.push_str("\nRatios medrelay/Janus (below 1: medrelay spends less):\n\n| scenario | CPU per packet | latency p99 | RSS per subscriber |\n| --- | --- | --- | --- |\n");
    for row in rows {
        if let (Some(m), Some(j)) = (figures(row, Sfu::Medrelay), figures(row, Sfu::Janus)) {
            t.push_str(&format!(
                "| {} | {:.2} | {:.2} | {:.2} |\n",
                row.name,
                m.cpu_us_per_packet / j.cpu_us_per_packet,
                m.p99_us / j.p99_us,
                m.rss_kib_per_subscriber / j.rss_kib_per_subscriber.max(1.0),
            ));
        }
    }
    t
}

fn write_section(path: &Path, table: &str) {
    let doc = std::fs::read_to_string(path).unwrap_or_default();
    let section = format!(
        "{BEGIN}\n{table}\n![CPU per forwarded packet](img/sfu-cpu-per-packet.png)\n![Added latency p99](img/sfu-latency-p99.png)\n{END}"
    );
    let updated = match (doc.find(BEGIN), doc.find(END)) {
        (Some(a), Some(b)) if a < b => format!("{}{section}{}", &doc[..a], &doc[b + END.len()..]),
        _ => format!("{doc}\n{section}\n"),
    };
    std::fs::write(path, updated).expect("writing docs/benchmarks.md");
}

/// A line per server of `value` over the scale steps (the rows named `scale`).
fn plot(rows: &[Row], path: &Path, title: &str, value: fn(&Figures) -> f64) {
    static FONT: std::sync::Once = std::sync::Once::new();
    FONT.call_once(|| {
        let bytes = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
            .expect("the DejaVu font (Debian's fonts-dejavu-core)");
        plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            Box::leak(bytes.into_boxed_slice()),
        )
        .map_err(|_| "font")
        .expect("font registers");
    });
    let scale: Vec<&Row> = rows
        .iter()
        .filter(|r| r.name.starts_with("scale"))
        .collect();
    if scale.is_empty() {
        return;
    }
    let max_x = scale.iter().map(|r| r.subscribers).max().unwrap_or(1) as f64;
    let max_y = scale
        .iter()
        .flat_map(|r| r.results.iter().map(|(_, f)| value(f)))
        .fold(0.0, f64::max)
        * 1.15;
    let root = BitMapBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).expect("plot");
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x * 1.05, 0.0..max_y.max(1.0))
        .expect("plot");
    chart
        .configure_mesh()
        .x_desc("subscribers to one publisher")
        .label_style(("sans-serif", 14))
        .draw()
        .expect("plot");
    for (sfu, color) in [(Sfu::Medrelay, BLUE), (Sfu::Janus, RED)] {
        let points: Vec<(f64, f64)> = scale
            .iter()
            .filter_map(|r| figures(r, sfu).map(|f| (r.subscribers as f64, value(f))))
            .collect();
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .expect("plot")
            .label(format!("{sfu:?}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .expect("plot");
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .expect("plot");
    root.present().expect("plot");
}
