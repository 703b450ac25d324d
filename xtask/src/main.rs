//! `cargo xtask <command>`: project automation in Rust (matklad's cargo-xtask pattern; the
//! alias lives in `.cargo/config.toml`). One module per subcommand, each with an `Args`
//! struct and a `run(Args) -> anyhow::Result<()>`; outputs go under `target/`.
//!
//! - `cargo xtask reproduce [--quick] [--only …] [--seeds K] [--out DIR] …`: the paper's
//!   experiments end to end, with `report.json`, `report.md`, CSV curves and figures
//!   ([`reproduce`](mod@reproduce), [`report`](mod@report)).
//! - `cargo xtask bench [--quick]`: the Criterion benchmarks and a summary against the
//!   reference timings ([`bench`](mod@bench)).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod bench;
mod plot;
mod report;
mod reproduce;

/// Project automation for the sde-gen workspace.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands; add a variant and a module per new one.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the paper's experiments end to end and write target/reproduce/report.{json,md},
    /// training curves (CSV) and figures (PNG, SVG).
    Reproduce(reproduce::Args),
    /// Run the solver benchmarks and write target/bench/summary.{md,json}.
    Bench(bench::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Reproduce(args) => reproduce::run(args),
        Command::Bench(args) => bench::run(args),
    }
}

/// The workspace root (the folder above `xtask/`), whatever the current directory.
pub(crate) fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// An output folder as given on the command line: absolute as it is, relative from the
/// workspace root (so `target/...` is the workspace's target folder from any directory).
pub(crate) fn resolve_out(path: &std::path::Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        workspace_root().join(path)
    }
}
