//! Times a few epochs of the ODE experiment: `cargo run --release -p sde-experiments --example ode_quick`.
use candle_core::Device;
use sde_experiments::{ode, Dataset};

fn main() -> anyhow::Result<()> {
    let epochs: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2);
    let data = Dataset::paper(0);
    let mut config = ode::OdeConfig::reference();
    config.train.epochs = epochs;
    config.train.validate_every = 1000;
    let t = std::time::Instant::now();
    let mut last = std::time::Instant::now();
    let out = ode::run(&config, &data, &Device::Cpu, |e| {
        println!(
            "epoch {} loss {:.4} val {:?} {:.1} ms/step",
            e.epoch,
            e.train_loss,
            e.validation_value(),
            last.elapsed().as_secs_f64() * 1e3 / 8.0
        );
        last = std::time::Instant::now();
    })?;
    println!(
        "train {:.2}s ({:.1} ms/step), total {:.2}s; val RK2 {:?} RK4 {:?}",
        out.history.seconds,
        1e3 * (out.history.seconds - out.history.validation_seconds) / (8 * epochs) as f64,
        t.elapsed().as_secs_f64(),
        out.val_ll_train_method,
        out.val_ll_eval_method
    );
    Ok(())
}
