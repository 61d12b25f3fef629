//! `cargo xtask codegen [--check]`: compiles `proto/` with protox (no protoc needed) and
//! prost-build into Rust files that are committed. `--check` (and the test below) fail when the
//! committed files are stale.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::util::workspace_root;

/// One group of `.proto` files and the directory (relative to the workspace root) that receives
/// the generated Rust, one file per protobuf package.
#[derive(Debug)]
pub struct ProtoSet {
    pub files: &'static [&'static str],
    pub out_dir: &'static str,
    /// Messages whose `Debug` is written by hand (they carry secrets or identifiers, which a
    /// derived `Debug` would print). Fully qualified: `.package.Message`.
    pub skip_debug: &'static [&'static str],
}

/// Every proto set in the workspace. Paths of `files` are relative to `proto/`.
pub const PROTO_SETS: &[ProtoSet] = &[
    ProtoSet {
        files: &["interop/handshake.proto"],
        out_dir: "crates/interop-noise/src/generated",
        // Carries the provider JWT and the account id: redacted in interop-noise.
        skip_debug: &[".interop.handshake.v1.ClientPayload"],
    },
    ProtoSet {
        files: &["interop/content.proto"],
        out_dir: "crates/interop-e2ee/src/generated",
        skip_debug: &[".interop.content.v1"],
    },
];

pub fn run(check: bool) -> Result<()> {
    let root = workspace_root();
    let mut stale = Vec::new();
    for set in PROTO_SETS {
        let generated = generate(&root, set)?;
        let out_dir = root.join(set.out_dir);
        let committed = read_rs_files(&out_dir)?;
        if committed != generated {
            stale.push(set.out_dir);
            if !check {
                write_dir(&out_dir, &committed, &generated)?;
                eprintln!("codegen: updated {}", set.out_dir);
            }
        }
    }
    if check && !stale.is_empty() {
        bail!(
            "generated code is stale in {}; run `cargo xtask codegen` and commit the result",
            stale.join(", ")
        );
    }
    if stale.is_empty() {
        eprintln!("codegen: up to date");
    }
    Ok(())
}

/// Compiles one set and returns file name -> contents.
pub fn generate(root: &Path, set: &ProtoSet) -> Result<BTreeMap<String, String>> {
    let proto_root = root.join("proto");
    let fds = protox::compile(set.files, [&proto_root])
        .with_context(|| format!("compiling {:?}", set.files))?;
    let tmp = std::env::temp_dir().join(format!(
        "interop-codegen-{}-{}",
        std::process::id(),
        set.out_dir.replace('/', "_")
    ));
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp)?;
    let mut config = prost_build::Config::new();
    config.out_dir(&tmp);
    config.bytes(["."]);
    config.skip_debug(set.skip_debug.iter().copied());
    config.compile_fds(fds).context("prost-build failed to generate Rust")?;
    let files = read_rs_files(&tmp)?;
    fs::remove_dir_all(&tmp)?;
    Ok(files)
}

fn read_rs_files(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    if !dir.exists() {
        return Ok(out);
    }
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs") {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .context("non-UTF-8 file name")?
                .to_owned();
            out.insert(name, fs::read_to_string(&path)?);
        }
    }
    Ok(out)
}

fn write_dir(
    dir: &Path,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Result<()> {
    fs::create_dir_all(dir)?;
    for name in old.keys().filter(|n| !new.contains_key(*n)) {
        fs::remove_file(dir.join(name))?;
    }
    for (name, text) in new {
        fs::write(dir.join(name), text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed generated code must equal what `proto/` generates now.
    #[test]
    fn committed_generated_code_is_fresh() {
        let root = workspace_root();
        for set in PROTO_SETS {
            let generated = generate(&root, set).expect("proto compiles");
            let committed = read_rs_files(&root.join(set.out_dir)).expect("readable");
            assert!(
                committed == generated,
                "{} is stale: run `cargo xtask codegen` and commit",
                set.out_dir
            );
        }
    }
}
