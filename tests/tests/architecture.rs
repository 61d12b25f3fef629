//! Architecture invariants checked over `cargo metadata`:
//! - interop-server never links interop-e2ee or libsignal (it routes ciphertext);
//! - every workspace crate that links libsignal is AGPL-3.0-only, and every published crate that
//!   does not is MIT OR Apache-2.0.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use serde_json::Value;

const SIGNAL: &str = "libsignal-protocol-syft";

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

/// Package names reachable from `root` through normal and build dependencies (not dev).
fn linked(meta: &Value, root_name: &str) -> BTreeSet<String> {
    let names: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let nodes: HashMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let root = names.iter().find(|(_, n)| **n == root_name).map(|(id, _)| *id).unwrap();
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let non_dev = dep["dep_kinds"].as_array().unwrap().iter().any(|k| k["kind"] != "dev");
            let dep_id = dep["pkg"].as_str().unwrap();
            if non_dev && seen.insert(names[dep_id].to_owned()) {
                stack.push(dep_id);
            }
        }
    }
    seen
}

#[test]
fn the_gatekeeper_never_links_signal() {
    let meta = metadata();
    let deps = linked(&meta, "interop-server");
    assert!(deps.contains("interop-noise"), "sanity: the walk finds real dependencies");
    assert!(!deps.contains("interop-e2ee"), "interop-server must not depend on interop-e2ee");
    assert!(!deps.contains(SIGNAL), "interop-server must not link libsignal");
}

#[test]
fn licences_follow_what_each_crate_links() {
    let meta = metadata();
    let members: BTreeSet<&str> =
        meta["workspace_members"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    let mut checked = 0;
    for pkg in meta["packages"].as_array().unwrap() {
        if !members.contains(pkg["id"].as_str().unwrap()) {
            continue;
        }
        let name = pkg["name"].as_str().unwrap();
        let licence = pkg["license"].as_str().unwrap_or("");
        let links_signal = linked(&meta, name).contains(SIGNAL);
        let unpublished = pkg["publish"].as_array().is_some_and(|a| a.is_empty());
        if links_signal {
            assert_eq!(licence, "AGPL-3.0-only", "{name} links libsignal");
        } else if !unpublished {
            assert_eq!(licence, "MIT OR Apache-2.0", "{name} does not link libsignal");
        }
        checked += 1;
    }
    assert!(checked >= 7, "found only {checked} workspace crates");
}
