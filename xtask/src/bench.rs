//! `cargo xtask bench [--quick]`: runs `cargo bench -p sde-benches --benches` (the solver
//! suite and one ODE-experiment training step), then
//! reads Criterion's results (`target/criterion/**/new/{benchmark,estimates}.json`) and writes
//! `target/bench/summary.md` and `summary.json`:
//!
//! - every benchmark's time per iteration and elements (paths × steps, or normals) per second;
//! - for the Euler–Maruyama benchmarks, the ratio (time per path-step) / (time per normal) of
//!   the same dtype: how far a step is from the floor set by the normal generator;
//! - Euler–Maruyama against the peers measured on one core of the same machine kind
//!   (`docs/REFERENCE-TIMINGS.md`: OU, 100,000 paths × 1,000 steps, float32).
//!
//! Only results written by this run are summarised (by file time), so a quick run never
//! mixes with an older full one; `--no-run` summarises the newest stored result of each
//! benchmark.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The short CI suite (10,000 paths × 100 steps, short measurement times) instead of the
    /// reference problem (100,000 paths × 1,000 steps).
    #[arg(long)]
    quick: bool,
    /// Do not run the benchmarks; summarise the results Criterion already has.
    #[arg(long)]
    no_run: bool,
    /// Only run benchmarks whose id matches this Criterion filter (a regex).
    #[arg(long)]
    filter: Option<String>,
    /// Output folder for summary.md and summary.json.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

/// Euler–Maruyama throughput of other implementations on one core of the reference machine
/// kind, float32, OU `dX = −X dt + 0.5 dW`, 100,000 paths × 1,000 steps, in path-steps per
/// second (`docs/REFERENCE-TIMINGS.md`).
pub const PEERS: [(&str, f64); 4] = [
    ("PyTorch loop", 3.1e8),
    ("diffrax (jit)", 2.1e8),
    ("numpy", 1.2e8),
    ("torchsde", 2.9e7),
];

/// Criterion's `benchmark.json` (the fields we use).
#[derive(Debug, Deserialize)]
struct BenchmarkFile {
    group_id: String,
    function_id: Option<String>,
    value_str: Option<String>,
    throughput: Option<ThroughputFile>,
    full_id: String,
}

/// Criterion's throughput: we only report element counts.
#[derive(Debug, Deserialize)]
enum ThroughputFile {
    Elements(u64),
    #[serde(other)]
    Other,
}

/// One statistic of Criterion's `estimates.json`, in nanoseconds per iteration.
#[derive(Debug, Deserialize)]
struct EstimateFile {
    point_estimate: f64,
    confidence_interval: IntervalFile,
}

#[derive(Debug, Deserialize)]
struct IntervalFile {
    lower_bound: f64,
    upper_bound: f64,
}

/// Criterion's `estimates.json`: `slope` exists for linear sampling, else `mean` is the
/// typical value (Criterion's own choice).
#[derive(Debug, Deserialize)]
struct EstimatesFile {
    mean: EstimateFile,
    slope: Option<EstimateFile>,
}

/// One measured benchmark.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Measurement {
    /// Criterion's full id, e.g. `em_slice/f32/100000x1000`.
    pub id: String,
    /// Group, e.g. `em_slice`.
    pub group: String,
    /// Function, here the dtype (`f32`/`f64`).
    pub dtype: String,
    /// Parameter: buffer length or `paths x steps`.
    pub parameter: String,
    /// Elements per iteration.
    pub elements: u64,
    /// Time per iteration, nanoseconds (Criterion's typical estimate).
    pub time_ns: f64,
    /// Its 95 % confidence interval.
    pub time_ns_ci: [f64; 2],
    /// Elements per second.
    pub elements_per_s: f64,
}

impl Measurement {
    fn ns_per_element(&self) -> f64 {
        self.time_ns / self.elements as f64
    }
}

/// An Euler–Maruyama benchmark against the normal generator of the same dtype.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NormalRatio {
    /// The Euler–Maruyama benchmark.
    pub id: String,
    /// Nanoseconds per path-step.
    pub ns_per_path_step: f64,
    /// Nanoseconds per normal draw (same dtype).
    pub ns_per_normal: f64,
    /// `ns_per_path_step / ns_per_normal` (1 is the floor).
    pub ratio: f64,
}

/// An Euler–Maruyama benchmark against the peers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeerComparison {
    /// The Euler–Maruyama benchmark.
    pub id: String,
    /// Our path-steps per second.
    pub path_steps_per_s: f64,
    /// Our speed divided by each peer's (> 1: faster), in [`PEERS`] order.
    pub speedup: BTreeMap<String, f64>,
}

/// The whole summary, as written to `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// `quick` or `full` (or `stored …` with `--no-run`).
    pub suite: String,
    /// Seconds since the Unix epoch when the summary was written.
    pub generated_unix_s: u64,
    /// Logical CPUs of this machine (the benchmarks themselves are single-threaded).
    pub cpus: usize,
    /// Every benchmark, sorted by id.
    pub benchmarks: Vec<Measurement>,
    /// Euler–Maruyama against the normal generator.
    pub em_vs_normals: Vec<NormalRatio>,
    /// The peers, path-steps per second (float32, one core).
    pub peers: BTreeMap<String, f64>,
    /// Euler–Maruyama against the peers.
    pub em_vs_peers: Vec<PeerComparison>,
    /// Milliseconds per optimiser step of the ODE experiment (batch 125, 99 RK2 steps),
    /// where the `train_step_ode` benchmark ran. Reference PyTorch: 84 ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_step_ode_ms: Option<f64>,
    /// Milliseconds per plain step of a 2-64-64-1 network (batch 125, one t per row, forward +
    /// backward + Adam), where `train_step_mlp` ran. Reference PyTorch flow matching: 0.71 ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_step_mlp_ms: Option<f64>,
    /// Milliseconds per step of the SDE shape (∂/∂t of two networks, ∂/∂x of a softplus one),
    /// where `train_step_sde` ran. Reference PyTorch SDE: 3.9 ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_step_sde_ms: Option<f64>,
}

/// Runs the benchmarks (unless `--no-run`), writes the summary and prints it.
pub fn run(args: Args) -> Result<()> {
    let root = crate::workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        root.join(target)
    };
    let since = if args.no_run {
        None
    } else {
        // File times can be coarse: allow a second of slack before the run started.
        let start = SystemTime::now() - Duration::from_secs(1);
        run_cargo_bench(&root, args.quick, args.filter.as_deref())?;
        Some(start)
    };
    let measurements = read_criterion(&target.join("criterion"), since)?;
    if measurements.is_empty() {
        bail!(
            "no Criterion results found under {}",
            target.join("criterion").display()
        );
    }
    let suite = match (args.no_run, args.quick) {
        (true, _) => "stored (newest result of each benchmark)",
        (false, true) => "quick",
        (false, false) => "full",
    };
    let summary = summarise(suite, measurements);
    let out = crate::resolve_out(&args.out);
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let markdown = to_markdown(&summary);
    fs::write(out.join("summary.md"), &markdown)
        .with_context(|| format!("writing {}", out.join("summary.md").display()))?;
    fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )
    .with_context(|| format!("writing {}", out.join("summary.json").display()))?;
    println!("{markdown}");
    println!("written: {}", out.join("summary.{md,json}").display());
    Ok(())
}

/// `cargo bench -p sde-benches --benches [-- filter]` (solvers and the training step), quick suite via the env var.
fn run_cargo_bench(root: &Path, quick: bool, filter: Option<&str>) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["bench", "-p", "sde-benches", "--benches"]);
    if let Some(filter) = filter {
        cmd.args(["--", filter]);
    }
    // One core, as the reference timings (the bench binary sets these too, unless given).
    cmd.env("CANDLE_NUM_THREADS", "1")
        .env("RAYON_NUM_THREADS", "1");
    if quick {
        cmd.env("SDE_BENCH_QUICK", "1");
    } else {
        cmd.env_remove("SDE_BENCH_QUICK");
    }
    eprintln!("running {cmd:?}");
    let status = cmd.status().context("starting cargo bench")?;
    if !status.success() {
        bail!("cargo bench failed: {status}");
    }
    Ok(())
}

/// Every `new/benchmark.json` under `dir` (with its `estimates.json`) written at or after
/// `since`, sorted by id. Benchmarks without an element throughput are skipped, and of
/// several sizes of one benchmark (quick and full suites) only the newest is kept.
fn read_criterion(dir: &Path, since: Option<SystemTime>) -> Result<Vec<Measurement>> {
    let mut files = Vec::new();
    find_benchmark_files(dir, &mut files)?;
    let mut newest: BTreeMap<(String, String), (SystemTime, Measurement)> = BTreeMap::new();
    for file in files {
        let new_dir = file.parent().context("benchmark.json has a parent")?;
        let estimates_path = new_dir.join("estimates.json");
        let modified = fs::metadata(&estimates_path)
            .and_then(|m| m.modified())
            .with_context(|| format!("reading the time of {}", estimates_path.display()))?;
        if since.is_some_and(|since| modified < since) {
            continue;
        }
        let bench: BenchmarkFile = read_json(&file)?;
        let estimates: EstimatesFile = read_json(&estimates_path)?;
        let Some(ThroughputFile::Elements(elements)) = bench.throughput else {
            continue;
        };
        let typical = estimates.slope.as_ref().unwrap_or(&estimates.mean);
        let key = (
            bench.group_id.clone(),
            bench.function_id.clone().unwrap_or_default(),
        );
        let measurement = Measurement {
            id: bench.full_id,
            group: bench.group_id,
            dtype: bench.function_id.unwrap_or_default(),
            parameter: bench.value_str.unwrap_or_default(),
            elements,
            time_ns: typical.point_estimate,
            time_ns_ci: [
                typical.confidence_interval.lower_bound,
                typical.confidence_interval.upper_bound,
            ],
            elements_per_s: elements as f64 / (typical.point_estimate * 1e-9),
        };
        if newest.get(&key).is_none_or(|(t, _)| *t <= modified) {
            newest.insert(key, (modified, measurement));
        }
    }
    let mut out: Vec<Measurement> = newest.into_values().map(|(_, m)| m).collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

fn find_benchmark_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            find_benchmark_files(&path, out)?;
        } else if path.file_name().is_some_and(|n| n == "benchmark.json")
            && path
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|n| n == "new")
        {
            out.push(path);
        }
    }
    Ok(())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The ratios and comparisons from the measurements.
fn summarise(suite: &str, benchmarks: Vec<Measurement>) -> Summary {
    let normal_ns = |dtype: &str| {
        benchmarks
            .iter()
            .find(|m| m.group == "normals" && m.dtype == dtype)
            .map(Measurement::ns_per_element)
    };
    let em: Vec<&Measurement> = benchmarks
        .iter()
        .filter(|m| m.group.starts_with("em_"))
        .collect();
    let em_vs_normals = em
        .iter()
        .filter_map(|m| {
            let ns_per_normal = normal_ns(&m.dtype)?;
            Some(NormalRatio {
                id: m.id.clone(),
                ns_per_path_step: m.ns_per_element(),
                ns_per_normal,
                ratio: m.ns_per_element() / ns_per_normal,
            })
        })
        .collect();
    let em_vs_peers = em
        .iter()
        .map(|m| PeerComparison {
            id: m.id.clone(),
            path_steps_per_s: m.elements_per_s,
            speedup: PEERS
                .iter()
                .map(|&(name, rate)| (name.to_string(), m.elements_per_s / rate))
                .collect(),
        })
        .collect();
    let step_ms = |group: &str| {
        benchmarks
            .iter()
            .find(|m| m.group == group)
            .map(|m| m.time_ns / 1e6)
    };
    Summary {
        train_step_ode_ms: step_ms("train_step_ode"),
        train_step_mlp_ms: step_ms("train_step_mlp"),
        train_step_sde_ms: step_ms("train_step_sde"),
        suite: suite.to_string(),
        generated_unix_s: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        benchmarks,
        em_vs_normals,
        peers: PEERS.iter().map(|&(n, r)| (n.to_string(), r)).collect(),
        em_vs_peers,
    }
}

/// `1.23e8`-style numbers for rates.
fn sci(x: f64) -> String {
    format!("{x:.2e}")
}

/// Times with a unit: ns, µs, ms or s.
fn duration(ns: f64) -> String {
    match ns {
        ns if ns < 1e3 => format!("{ns:.1} ns"),
        ns if ns < 1e6 => format!("{:.2} µs", ns / 1e3),
        ns if ns < 1e9 => format!("{:.2} ms", ns / 1e6),
        ns => format!("{:.3} s", ns / 1e9),
    }
}

/// The summary as Markdown tables.
fn to_markdown(s: &Summary) -> String {
    let mut md = String::new();
    md.push_str(&format!(
        "# Solver benchmarks ({} suite)\n\nSingle-threaded Criterion measurements \
         (`cargo bench -p sde-benches --bench solvers`) on a {}-CPU machine. Elements are \
         paths × steps for the solvers and draws for `normals`.\n\n",
        s.suite, s.cpus
    ));
    md.push_str("| benchmark | elements/iter | time/iter (95 % CI) | elements/s | ns/element |\n");
    md.push_str("|---|---:|---:|---:|---:|\n");
    for m in &s.benchmarks {
        md.push_str(&format!(
            "| {} | {} | {} ({} – {}) | {} | {:.3} |\n",
            m.id,
            m.elements,
            duration(m.time_ns),
            duration(m.time_ns_ci[0]),
            duration(m.time_ns_ci[1]),
            sci(m.elements_per_s),
            m.ns_per_element()
        ));
    }
    if !s.em_vs_normals.is_empty() {
        md.push_str(
            "\n## Euler–Maruyama against the normal generator\n\n\
             Each path-step needs one N(0, 1) draw, so the ratio cannot go below 1.\n\n\
             | benchmark | ns/path-step | ns/normal (same dtype) | ratio |\n|---|---:|---:|---:|\n",
        );
        for r in &s.em_vs_normals {
            md.push_str(&format!(
                "| {} | {:.3} | {:.3} | {:.2} |\n",
                r.id, r.ns_per_path_step, r.ns_per_normal, r.ratio
            ));
        }
    }
    if !s.em_vs_peers.is_empty() {
        md.push_str(
            "\n## Euler–Maruyama against other implementations\n\n\
             Peers from `docs/REFERENCE-TIMINGS.md`: one core of the same machine kind, float32, \
             OU dX = −X dt + 0.5 dW, 100,000 paths × 1,000 steps. Cells are our speed over \
             theirs (> 1: faster); compare the `f32` rows of the full suite.\n\n",
        );
        md.push_str("| benchmark | path-steps/s |");
        for (name, rate) in PEERS {
            md.push_str(&format!(" vs {name} ({}) |", sci(rate)));
        }
        md.push_str("\n|---|---:|");
        md.push_str(&"---:|".repeat(PEERS.len()));
        md.push('\n');
        for c in &s.em_vs_peers {
            md.push_str(&format!("| {} | {} |", c.id, sci(c.path_steps_per_s)));
            for (name, _) in PEERS {
                md.push_str(&format!(" ×{:.2} |", c.speedup[name]));
            }
            md.push('\n');
        }
    }
    let steps = [
        ("ODE experiment (99 RK2 steps)", s.train_step_ode_ms, 84.0),
        (
            "plain 2-64-64-1 step (flow-matching shape)",
            s.train_step_mlp_ms,
            0.71,
        ),
        (
            "SDE shape (∂/∂t ×2, ∂/∂x of softplus σ)",
            s.train_step_sde_ms,
            3.9,
        ),
    ];
    if steps.iter().any(|(_, ms, _)| ms.is_some()) {
        md.push_str(
            "\n## Training steps (batch 125, forward + backward + Adam)\n\n\
             | step | ms | reference PyTorch ms | speed-up |\n|---|---:|---:|---:|\n",
        );
        for (name, ms, reference) in steps {
            if let Some(ms) = ms {
                md.push_str(&format!(
                    "| {name} | {ms:.3} | {reference} | ×{:.1} |\n",
                    reference / ms
                ));
            }
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, group: &str, function: &str, value: &str, elements: u64, ns: f64) {
        let new = dir.join(group).join(function).join(value).join("new");
        fs::create_dir_all(&new).unwrap();
        let bench = format!(
            r#"{{"group_id":"{group}","function_id":"{function}","value_str":"{value}",
                "throughput":{{"Elements":{elements}}},"full_id":"{group}/{function}/{value}",
                "directory_name":"{group}/{function}/{value}","title":"t"}}"#
        );
        fs::write(new.join("benchmark.json"), bench).unwrap();
        let est = |x: f64| {
            format!(
                r#"{{"confidence_interval":{{"confidence_level":0.95,"lower_bound":{},
                    "upper_bound":{}}},"point_estimate":{x},"standard_error":1.0}}"#,
                0.9 * x,
                1.1 * x
            )
        };
        let estimates = format!(
            r#"{{"mean":{},"median":{},"median_abs_dev":{},"slope":null,"std_dev":{}}}"#,
            est(ns),
            est(ns),
            est(1.0),
            est(1.0)
        );
        fs::write(new.join("estimates.json"), estimates).unwrap();
    }

    #[test]
    fn reads_criterion_files_and_computes_ratios() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        // 2048 normals in 2048 ns: 1 ns each. 1e6 path-steps in 2.5e6 ns: 2.5 ns each.
        write(&dir, "normals", "f32", "2048", 2048, 2048.0);
        write(&dir, "em_slice", "f32", "1000x1000", 1_000_000, 2.5e6);
        write(&dir, "ode_rk4_vec", "f64", "1000x1000", 1_000_000, 1e6);
        // An older result of another size of the same benchmark is dropped.
        write(&dir, "em_slice", "f32", "10x10", 100, 1e3);
        let old = SystemTime::now() - Duration::from_secs(3600);
        let file = dir.join("em_slice/f32/10x10/new/estimates.json");
        fs::File::options()
            .write(true)
            .open(file)
            .unwrap()
            .set_modified(old)
            .unwrap();
        // A stray report folder is ignored.
        fs::create_dir_all(dir.join("report")).unwrap();
        let ms = read_criterion(&dir, None).unwrap();
        assert_eq!(ms.len(), 3);
        let s = summarise("quick", ms);
        assert_eq!(s.em_vs_normals.len(), 1);
        let r = &s.em_vs_normals[0];
        assert!((r.ns_per_normal - 1.0).abs() < 1e-12);
        assert!((r.ratio - 2.5).abs() < 1e-12);
        let peers = &s.em_vs_peers[0];
        assert!((peers.path_steps_per_s - 4e8).abs() < 1.0);
        assert!((peers.speedup["PyTorch loop"] - 4e8 / 3.1e8).abs() < 1e-12);
        let md = to_markdown(&s);
        assert!(md.contains("| em_slice/f32/1000x1000 |"));
        assert!(md.contains("| 2.50 |"));
        // Nothing is newer than the far future.
        let later = SystemTime::now() + Duration::from_secs(3600);
        assert!(read_criterion(&dir, Some(later)).unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn durations_have_units() {
        assert_eq!(duration(12.34), "12.3 ns");
        assert_eq!(duration(2.5e6), "2.50 ms");
        assert_eq!(duration(1.5e9), "1.500 s");
    }
}
