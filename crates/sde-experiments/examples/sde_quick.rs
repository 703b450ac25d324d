//! Times a few epochs of the SDE experiment:
//! `cargo run --release -p sde-experiments --example sde_quick -- [epochs]`; with the
//! environment variable `SDE_QUICK_FLOW` set, the sinh–arcsinh variant.
use candle_core::Device;
use sde_experiments::{sde, Dataset};

fn main() -> anyhow::Result<()> {
    let epochs: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(50);
    if std::env::args().nth(2).as_deref() == Some("serial") {
        sde_variational::engine::set_parallel(false);
    }
    let data = Dataset::paper(0);
    let mut config = if std::env::var_os("SDE_QUICK_FLOW").is_some() {
        sde::SdeConfig::sinh_arcsinh()
    } else {
        sde::SdeConfig::reference()
    };
    config.train.epochs = epochs;
    config.train.validate_every = epochs;
    if let Some(every) = std::env::args().nth(3) {
        // `sde_quick EPOCHS [serial|parallel] EVERY`: validate and checkpoint every EVERY epochs.
        config.train.validate_every = every.parse()?;
        config.train.checkpoint = Some(std::env::temp_dir().join("sde_quick.safetensors"));
    }
    let out = sde::run(&config, &data, &Device::Cpu, |_| {})?;
    let h = &out.history;
    println!(
        "{epochs} epochs: train {:.2}s ({:.3} ms/step, {:.2}s validating); eval {:.2}s",
        h.seconds,
        1e3 * (h.seconds - h.validation_seconds) / (8 * epochs) as f64,
        h.validation_seconds,
        out.eval_seconds
    );
    println!("{:?}\nKS {:.4}", out.eval, out.ks);
    Ok(())
}
