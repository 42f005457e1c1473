//! `cargo xtask bench [--quick]`: every figure that says billsync is fast, each against a
//! baseline measured in the same run, written to `target/bench/report.json` and
//! `target/bench/report.md`.
//!
//! 1. Micro: the criterion benches (`crates/{domain,auth,storage}/benches`) with short
//!    measurement times, read back from `target/criterion/**/new/estimates.json`.
//! 2. Macro: `billsync-bench` (crates/bench), built in release with the real `billsync`
//!    binary, against the in-process emulator (see that crate's documentation). A full run
//!    also builds the agent alone (`--no-default-features`, in `target/no-emulator`) for
//!    `binary_size_without_emulator`.
//!
//! `--quick` runs the domain and auth micro benches only and the macro benches with smaller
//! workloads (the rate-limited drain still takes one 60 s window).
//!
//! The report's `ratio` is `value / baseline`, except for the drain, where it is
//! `baseline / value` (the least time the limit allows over the time taken: the efficiency).
//! xtask stays light: it shells out to cargo and reads the figures as text.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use crate::{cargo, root, sh};

/// One line of the report.
struct Figure {
    name: String,
    value: f64,
    unit: String,
    baseline_name: String,
    baseline: Option<f64>,
    ratio: Option<f64>,
    target: String,
    note: String,
}

/// A micro figure: a criterion benchmark id against a baseline benchmark id.
struct Micro {
    name: &'static str,
    id: &'static str,
    baseline_name: &'static str,
    baseline_id: &'static str,
    target: &'static str,
    quick: bool,
}

const MICRO: &[Micro] = &[
    Micro {
        name: "event_parse_validate",
        id: "event_parse_validate",
        baseline_name: "serde_json_value_parse",
        baseline_id: "baseline_serde_value_parse",
        target: "value < 2 us",
        quick: true,
    },
    Micro {
        name: "batch_500_split_and_serialize",
        id: "batch_500_split_and_serialize",
        baseline_name: "serde_json_value_serialize_500",
        baseline_id: "baseline_serde_value_serialize_500",
        target: "",
        quick: true,
    },
    Micro {
        name: "policy_check",
        id: "policy_check",
        baseline_name: "claims_value_lookup",
        baseline_id: "baseline_claims_value_lookup",
        target: "value < 1 us",
        quick: true,
    },
    Micro {
        name: "policy_authorize_headers",
        id: "policy_authorize_headers",
        baseline_name: "policy_check",
        baseline_id: "policy_check",
        target: "",
        quick: true,
    },
    Micro {
        name: "jwt_inspect_decode_unverified",
        id: "jwt/inspect_decode_unverified",
        baseline_name: "base64_serde_value_decode",
        baseline_id: "jwt/baseline_base64_value_decode",
        target: "",
        quick: true,
    },
    Micro {
        name: "jwt_verify_rs256",
        id: "jwt/verify_rs256_jwks",
        baseline_name: "jsonwebtoken_jwks_rs256",
        baseline_id: "jwt/baseline_jsonwebtoken_rs256",
        target: "ratio <= 1.2",
        quick: true,
    },
    Micro {
        name: "outbox_enqueue_batch_1000",
        id: "enqueue_batch_1000/outbox_enqueue",
        baseline_name: "raw_sqlx_insert_loop",
        baseline_id: "enqueue_batch_1000/baseline_raw_insert_loop_one_tx",
        target: "",
        quick: false,
    },
    Micro {
        name: "outbox_enqueue_single_64_producers",
        id: "enqueue_single_64_producers/outbox_group_commit",
        baseline_name: "raw_one_tx_per_event",
        baseline_id: "enqueue_single_64_producers/baseline_raw_one_tx_per_event",
        target: "",
        quick: false,
    },
    Micro {
        name: "outbox_lease_ack_500_at_1m_pending",
        id: "lease_ack_backlog/lease_500_ack_500/1000000",
        baseline_name: "lease_ack_500_at_10k_pending",
        baseline_id: "lease_ack_backlog/lease_500_ack_500/10000",
        target: "ratio <= 1.3",
        quick: false,
    },
];

pub fn run(quick: bool) -> Result<(), String> {
    let started = Instant::now();
    let out = root().join("target/bench");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;

    // Criterion: short measurement times; the storage benches only in the full run.
    let crit = ["--noplot", "--warm-up-time", "0.5", "--measurement-time", if quick { "1" } else { "2" }];
    let mut benches = vec![("billsync-domain", "domain"), ("billsync-auth", "jwt")];
    if !quick {
        benches.push(("billsync-storage", "outbox"));
    }
    let pg = postgres_url();
    for (package, bench) in &benches {
        let mut cmd = cargo();
        cmd.args(["bench", "-p", package, "--bench", bench, "--"]).args(crit);
        if let Some(url) = &pg {
            cmd.env("BILLSYNC_TEST_DATABASE_URL", url);
        }
        sh(&mut cmd)?;
    }

    // Macro: the real binary and the bench driver, in release.
    sh(cargo().args(["build", "--release", "-p", "billsync-cli", "-p", "billsync-bench"]))?;
    let tsv = out.join("macro.tsv");
    let mut cmd = Command::new(root().join("target/release/billsync-bench"));
    cmd.arg("--billsync").arg(root().join("target/release/billsync")).arg("--out").arg(&tsv);
    if quick {
        cmd.arg("--quick");
    } else {
        // The agent alone (no emulator), for its size beside the shipped one: a target
        // directory of its own, so that the default build above stays as it is.
        let lean = root().join("target/no-emulator");
        sh(cargo()
            .args(["build", "--release", "-p", "billsync-cli", "--no-default-features", "--target-dir"])
            .arg(&lean))?;
        cmd.arg("--billsync-lean").arg(lean.join("release/billsync"));
    }
    if let Some(url) = &pg {
        cmd.env("BILLSYNC_TEST_DATABASE_URL", url);
    }
    sh(&mut cmd)?;

    let mut figures = Vec::new();
    for m in MICRO.iter().filter(|m| m.quick || !quick) {
        match (criterion_ns(m.id), criterion_ns(m.baseline_id)) {
            (Some(v), Some(b)) => figures.push(Figure {
                name: m.name.into(),
                value: v,
                unit: "ns".into(),
                baseline_name: m.baseline_name.into(),
                baseline: Some(b),
                ratio: Some(v / b),
                target: m.target.into(),
                note: format!("criterion mean of `{}` vs `{}`", m.id, m.baseline_id),
            }),
            _ => eprintln!("xtask bench: no criterion estimate for {} or {}", m.id, m.baseline_id),
        }
    }
    let text = std::fs::read_to_string(&tsv).map_err(|e| format!("{}: {e}", tsv.display()))?;
    figures.extend(text.lines().filter_map(parse_line));

    let json = out.join("report.json");
    let md = out.join("report.md");
    std::fs::write(&json, to_json(&figures)).map_err(|e| format!("{}: {e}", json.display()))?;
    std::fs::write(&md, to_markdown(&figures, quick, started.elapsed().as_secs()))
        .map_err(|e| format!("{}: {e}", md.display()))?;
    eprintln!("xtask bench: wrote {} and {} in {:.0?}", json.display(), md.display(), started.elapsed());
    Ok(())
}

/// The PostgreSQL to use: `BILLSYNC_TEST_DATABASE_URL`, else what `scripts/ensure-postgres.sh`
/// prints (it starts a local server where one is installed); none means the PostgreSQL
/// figures are skipped, with a message.
fn postgres_url() -> Option<String> {
    if let Ok(url) = std::env::var("BILLSYNC_TEST_DATABASE_URL") {
        return Some(url);
    }
    let out = Command::new("bash").arg(root().join("scripts/ensure-postgres.sh")).output().ok()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    out.status.success().then(|| stdout.lines().last().unwrap_or_default().trim().to_owned()).filter(|u| !u.is_empty())
}

/// The mean of a criterion benchmark, in nanoseconds, from `new/estimates.json`.
fn criterion_ns(id: &str) -> Option<f64> {
    let path: PathBuf = root().join("target/criterion").join(id).join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let mean = &text[text.find("\"mean\"")?..];
    let rest = &mean[mean.find("\"point_estimate\"")? + "\"point_estimate\"".len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest.find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))?;
    rest[..end].parse().ok()
}

fn parse_line(line: &str) -> Option<Figure> {
    let f: Vec<&str> = line.split('\t').collect();
    if f.len() < 8 {
        return None;
    }
    let num = |s: &str| s.parse::<f64>().ok().filter(|v| v.is_finite());
    Some(Figure {
        name: f[0].into(),
        value: num(f[1])?,
        unit: f[2].into(),
        baseline_name: f[3].into(),
        baseline: num(f[4]),
        ratio: num(f[5]),
        target: f[6].into(),
        note: f[7].into(),
    })
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => {
            let r = (v * 1e4).round() / 1e4;
            if r.fract() == 0.0 { format!("{r:.1}") } else { format!("{r}") }
        }
        _ => "null".into(),
    }
}

fn to_json(figures: &[Figure]) -> String {
    let rows: Vec<String> = figures
        .iter()
        .map(|f| {
            format!(
                "    {{\"name\": {}, \"value\": {}, \"unit\": {}, \"baseline_name\": {}, \"baseline\": {}, \"ratio\": {}, \
                 \"target\": {}}}",
                json_str(&f.name),
                json_num(Some(f.value)),
                json_str(&f.unit),
                json_str(&f.baseline_name),
                json_num(f.baseline),
                json_num(f.ratio),
                json_str(&f.target)
            )
        })
        .collect();
    format!("{{\"figures\": [\n{}\n]}}\n", rows.join(",\n"))
}

fn to_markdown(figures: &[Figure], quick: bool, secs: u64) -> String {
    let fmt = |v: Option<f64>| match v {
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.3}"),
        None => "-".into(),
    };
    let mut s = format!(
        "# billsync benchmark report\n\n`cargo xtask bench{}` on {} ({} s including builds).\n\n\
         `ratio` is value / baseline, except for `drain_rate_limited_2_tenants`: baseline / value (the drain \
         efficiency).\n\n| figure | value | unit | baseline | baseline value | ratio | target |\n\
         |---|---:|---|---|---:|---:|---|\n",
        if quick { " --quick" } else { "" },
        machine(),
        secs
    );
    for f in figures {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            f.name,
            fmt(Some(f.value)),
            f.unit,
            f.baseline_name,
            fmt(f.baseline),
            f.ratio.map(|r| format!("{r:.3}")).unwrap_or_else(|| "-".into()),
            f.target
        ));
    }
    s.push_str("\n## Notes\n\n");
    for f in figures {
        s.push_str(&format!("- `{}`: {}\n", f.name, f.note));
    }
    s
}

/// `nproc`, memory and CPU model, for the report's header.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            let kib: u64 = t.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.0} GiB RAM", kib as f64 / 1024.0 / 1024.0))
        })
        .unwrap_or_default();
    format!("{cpus} CPU(s), {model}, {mem}")
}
