//! `cargo xtask arch`: the layering of the workspace, checked from `cargo metadata`'s resolved
//! dependency graph (normal dependencies, followed transitively).
//!
//! - the domain is pure: no I/O crate and no other workspace crate below it;
//! - no adapter depends on another adapter, on the library, the CLI or the emulator (the HTTP
//!   adapters share `billsync-http`, which depends on nothing of the workspace);
//! - the library depends on neither the CLI nor the emulator, nor on the CLI's own crates;
//! - nothing depends on the benchmarks, in any kind of dependency.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::{cargo, output};

const DOMAIN: &str = "billsync-domain";
const ADAPTERS: &[&str] = &["billsync-auth", "billsync-transport", "billsync-storage"];
const LIBRARY: &str = "billsync";
const CLI: &str = "billsync-cli";
const EMULATOR: &str = "billsync-emulator";
const BENCH: &str = "billsync-bench";
/// Support shared by the HTTP adapters (the client builder): below them, beside the domain.
const HTTP: &str = "billsync-http";

/// Crates that must never be in the domain's tree: the domain does no I/O.
const IMPURE: &[&str] = &["tokio", "reqwest", "sqlx", "hyper", "axum", "mio"];
/// The command line's crates, which an embedding service must not compile.
const CLI_ONLY: &[&str] = &["clap", "indicatif", "anyhow", "axum", "tracing-subscriber"];

/// The resolved graph: package name → (normal dependencies, dependencies of any kind).
struct Graph {
    normal: BTreeMap<String, BTreeSet<String>>,
    any: BTreeMap<String, BTreeSet<String>>,
}

impl Graph {
    fn load() -> Result<Self, String> {
        let text = output(cargo().args(["metadata", "--format-version", "1", "--locked"]))?;
        Self::parse(&text)
    }

    fn parse(text: &str) -> Result<Self, String> {
        let meta: Value = serde_json::from_str(text).map_err(|e| format!("cargo metadata: {e}"))?;
        let names: BTreeMap<&str, &str> = meta["packages"]
            .as_array()
            .ok_or("cargo metadata: no packages")?
            .iter()
            .filter_map(|p| Some((p["id"].as_str()?, p["name"].as_str()?)))
            .collect();
        let name = |id: &Value| id.as_str().and_then(|id| names.get(id)).map(|n| (*n).to_owned());
        let mut graph = Self { normal: BTreeMap::new(), any: BTreeMap::new() };
        for node in meta["resolve"]["nodes"].as_array().ok_or("cargo metadata: no resolve graph")? {
            let from = name(&node["id"]).ok_or("cargo metadata: a node without a package")?;
            for dep in node["deps"].as_array().into_iter().flatten() {
                let Some(to) = name(&dep["pkg"]) else { continue };
                let kinds = dep["dep_kinds"].as_array().into_iter().flatten();
                if kinds.clone().any(|k| k["kind"].is_null()) {
                    graph.normal.entry(from.clone()).or_default().insert(to.clone());
                }
                graph.any.entry(from.clone()).or_default().insert(to);
            }
        }
        Ok(graph)
    }

    /// Every package `root` links, through normal dependencies.
    fn below(&self, root: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![root.to_owned()];
        while let Some(p) = todo.pop() {
            for d in self.normal.get(&p).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        seen
    }

    /// Every broken rule, as a sentence.
    fn violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut forbid = |from: &str, what: &[&str], why: &str| {
            let below = self.below(from);
            for w in what.iter().filter(|w| below.contains(**w)) {
                out.push(format!("{from} depends on {w}: {why}"));
            }
        };
        let workspace: Vec<&str> =
            [LIBRARY, CLI, EMULATOR, BENCH].into_iter().chain(ADAPTERS.iter().copied()).collect();
        forbid(DOMAIN, IMPURE, "the domain does no I/O");
        forbid(DOMAIN, &workspace, "the domain depends on nothing of the workspace");
        forbid(DOMAIN, &[HTTP], "the domain depends on nothing of the workspace");
        let mut not_below_http = workspace.clone();
        not_below_http.push(DOMAIN);
        forbid(HTTP, &not_below_http, "the adapters' HTTP support depends on nothing of the workspace");
        for a in ADAPTERS {
            let others: Vec<&str> = [LIBRARY, CLI, EMULATOR, BENCH]
                .into_iter()
                .chain(ADAPTERS.iter().copied().filter(|o| o != a))
                .collect();
            forbid(a, &others, "an adapter depends on the domain only, never on another adapter");
        }
        forbid(LIBRARY, &[CLI, EMULATOR, BENCH], "the library must build without the CLI and the emulator");
        forbid(LIBRARY, CLI_ONLY, "the command line's crates belong to billsync-cli");
        for (from, deps) in &self.any {
            if deps.contains(BENCH) {
                out.push(format!("{from} depends on {BENCH}: nothing may depend on the benchmarks"));
            }
        }
        out
    }
}

/// Fails with every broken layering rule.
pub fn run() -> Result<(), String> {
    let broken = Graph::load()?.violations();
    if broken.is_empty() {
        eprintln!(
            "arch: ok (domain pure; adapters independent; {LIBRARY} without {CLI}, {EMULATOR} or {CLI_ONLY:?}; \
             nothing depends on {BENCH})"
        );
        Ok(())
    } else {
        Err(format!("the layering is broken:\n  - {}", broken.join("\n  - ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A graph of `(from, to, kind)` edges, as cargo metadata would write it.
    fn graph(edges: &[(&str, &str, Option<&str>)]) -> Graph {
        let mut packages: BTreeSet<&str> = BTreeSet::new();
        for (a, b, _) in edges {
            packages.insert(a);
            packages.insert(b);
        }
        let nodes: Vec<Value> = packages
            .iter()
            .map(|p| {
                let deps: Vec<Value> = edges
                    .iter()
                    .filter(|(a, ..)| a == p)
                    .map(|(_, b, k)| serde_json::json!({"pkg": b, "dep_kinds": [{"kind": k}]}))
                    .collect();
                serde_json::json!({"id": p, "deps": deps})
            })
            .collect();
        let meta = serde_json::json!({
            "packages": packages.iter().map(|p| serde_json::json!({"id": p, "name": p})).collect::<Vec<_>>(),
            "resolve": {"nodes": nodes},
        });
        Graph::parse(&meta.to_string()).unwrap()
    }

    const GOOD: &[(&str, &str, Option<&str>)] = &[
        ("billsync-auth", "billsync-domain", None),
        ("billsync-storage", "billsync-domain", None),
        ("billsync", "billsync-auth", None),
        ("billsync", "billsync-storage", None),
        ("billsync", "billsync-emulator", Some("dev")),
        ("billsync-cli", "billsync", None),
        ("billsync-cli", "billsync-emulator", None),
        ("billsync-cli", "clap", None),
        ("billsync-domain", "serde", None),
    ];

    #[test]
    fn the_intended_layering_passes() {
        assert_eq!(graph(GOOD).violations(), Vec::<String>::new());
    }

    #[test]
    fn an_adapter_on_another_adapter_fails_even_through_a_third_crate() {
        let mut edges = GOOD.to_vec();
        edges.push(("billsync-auth", "helper", None));
        edges.push(("helper", "billsync-storage", None));
        let v = graph(&edges).violations();
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].starts_with("billsync-auth depends on billsync-storage"), "{v:?}");
    }

    #[test]
    fn io_in_the_domain_the_cli_in_the_library_and_a_bench_dependency_each_fail() {
        let mut edges = GOOD.to_vec();
        edges.push(("billsync-domain", "tokio", None));
        edges.push(("billsync", "anyhow", None));
        edges.push(("billsync-auth", "billsync-bench", Some("dev")));
        let v = graph(&edges).violations();
        assert!(v.iter().any(|s| s.starts_with("billsync-domain depends on tokio")), "{v:?}");
        assert!(v.iter().any(|s| s.starts_with("billsync depends on anyhow")), "{v:?}");
        assert!(v.iter().any(|s| s.starts_with("billsync-auth depends on billsync-bench")), "{v:?}");
        assert_eq!(v.len(), 3, "{v:?}");
    }
}
