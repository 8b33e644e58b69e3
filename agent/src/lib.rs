//! hostprobe: a host-level performance agent on eBPF.
//!
//! Data flows one way: probes -> interval -> report -> outputs.
//!
//! - Kernel side and loading: [`probes`] (one module per probe, behind the
//!   [`probes::Probe`] trait; the list is `probes::ALL`), [`ebpf`] (loading,
//!   maps, batch reads), [`btf`] (field offsets), [`syscalls`] (names).
//! - One interval: [`agent`] (loads the probes, collects each interval),
//!   [`report`] (what an interval says), [`procinfo`] (`/proc` names,
//!   containers, pods), [`hist`] (the histogram layout), [`status`] (each
//!   probe's health), [`diagnose`] and [`verdict`] (a bottleneck per
//!   process), [`fleet`] (the same across hosts).
//! - Outputs: [`output`] (text, JSON), [`top`] (the interactive view); [`export`] (the stream to a
//!   collector) with [`wire`] (its messages); [`metrics`] (cumulative state
//!   per process group), [`catalog`] (every exported metric, named once),
//!   [`prom`] and [`otlp`] (its two renderings).
//! - The fleet: [`collector`] (service, store, journal, query).
//! - Commands: [`cli`] (flags), [`run`] (`run`, `diagnose`), [`check`],
//!   [`stacks`] and [`symbols`] (`offcpu` flame graphs), [`units`]
//!   (durations and sizes).
//!
//! The map is enforced by the `layering` tests below: no import cycles, and
//! the collector and the exporters import no probe or command code.

pub mod agent;
pub mod baseline;
pub mod btf;
pub mod catalog;
pub mod check;
pub mod cli;
pub mod collector;
pub mod diagnose;
pub mod ebpf;
pub mod export;
pub mod filters;
pub mod fleet;
pub mod grpc;
pub mod hist;
pub mod metrics;
pub mod otlp;
pub mod output;
pub mod probes;
pub mod procinfo;
pub mod prom;
pub mod remote_write;
pub mod report;
pub mod run;
pub mod stacks;
pub mod status;
pub mod symbols;
pub mod syscalls;
pub mod top;
pub mod units;
pub mod verdict;
pub mod web;
pub mod wire;

/// The module map holds: no module imports another that imports it back
/// (directly or around a loop), and the collector and the exporters reach
/// no probe, kernel or command code. `cargo test -p hostprobe --lib layering`.
#[cfg(test)]
mod layering {
    use std::collections::{BTreeMap, BTreeSet};

    /// The top-level modules each module's code (comments aside) names as
    /// `crate::x`, a folder's files counting as their folder's.
    fn imports() -> BTreeMap<String, BTreeSet<String>> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let rel = path.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
                let module = rel.split('/').next().unwrap().trim_end_matches(".rs").to_string();
                if module == "main" || module == "lib" {
                    continue;
                }
                let code: String = std::fs::read_to_string(&path)
                    .unwrap()
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .collect::<Vec<_>>()
                    .join("\n");
                let mut names = BTreeSet::new();
                for (i, _) in code.match_indices("crate::") {
                    let rest = &code[i + 7..];
                    if let Some(group) = rest.strip_prefix('{') {
                        // `crate::{a, b::{c, d}, e}`: the names at depth 0.
                        let (mut depth, mut word, mut start) = (0, String::new(), true);
                        for c in group.chars() {
                            match c {
                                '{' => depth += 1,
                                '}' if depth == 0 => break,
                                '}' => depth -= 1,
                                ',' if depth == 0 => start = true,
                                c if depth == 0 && start && (c.is_alphanumeric() || c == '_') => word.push(c),
                                _ if depth == 0 && start && !word.is_empty() => {
                                    names.insert(std::mem::take(&mut word));
                                    start = false;
                                }
                                _ => {}
                            }
                        }
                        if !word.is_empty() {
                            names.insert(word);
                        }
                    } else {
                        let word: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                        names.insert(word);
                    }
                }
                names.remove(&module);
                graph.entry(module).or_default().extend(names);
            }
        }
        graph
    }

    #[test]
    fn modules_form_no_cycle() {
        let graph = imports();
        // Depth-first search for a way back to where it started.
        fn reaches(
            graph: &BTreeMap<String, BTreeSet<String>>,
            from: &str,
            to: &str,
            seen: &mut BTreeSet<String>,
            path: &mut Vec<String>,
        ) -> bool {
            for next in graph.get(from).into_iter().flatten() {
                if next == to || (seen.insert(next.clone()) && reaches(graph, next, to, seen, path)) {
                    path.push(next.clone());
                    return true;
                }
            }
            false
        }
        for m in graph.keys() {
            let mut path = Vec::new();
            if reaches(&graph, m, m, &mut BTreeSet::new(), &mut path) {
                path.push(m.clone());
                path.reverse();
                panic!("an import cycle: {}", path.join(" -> "));
            }
        }
    }

    #[test]
    fn the_collector_and_the_exporters_import_no_probe_or_command_code() {
        let graph = imports();
        let exporters =
            ["collector", "catalog", "metrics", "prom", "otlp", "export", "grpc", "wire", "status", "units"];
        let forbidden = ["probes", "ebpf", "btf", "agent", "run", "cli", "check", "stacks"];
        for e in exporters {
            let bad: Vec<&String> = graph[e].iter().filter(|m| forbidden.contains(&m.as_str())).collect();
            assert!(bad.is_empty(), "{e} imports {bad:?}");
        }
    }
}
