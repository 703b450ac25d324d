//! One training step of the ODE experiment (REFERENCE.md §1): batch 125, 99 RK2 steps of the
//! augmented CNF, forward and backward, plus the Adam update — the baseline of later speed
//! work. Reference (PyTorch, one core of the same machine kind): 84 ms per step.

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use std::hint::black_box;

use criterion::{criterion_main, Criterion, Throughput};
use sde_experiments::{ode, Dataset};

fn ode_training_step(c: &mut Criterion) {
    let config = ode::OdeConfig::reference();
    let (model, vars) = ode::build_model(&config, &Device::Cpu).expect("model");
    let data = Dataset::paper(0);
    let batch = Tensor::from_slice(&data.train[..125], (125, 1), &Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F32))
        .expect("batch");
    let mut opt = AdamW::new(
        vars.all_vars(),
        ParamsAdamW {
            lr: 1e-2,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )
    .expect("optimiser");
    let mut group = c.benchmark_group("ode_train_step");
    group.sample_size(20);
    // One element = one optimizer step, so `cargo xtask bench` lists steps per second.
    group.throughput(Throughput::Elements(1));
    group.bench_function("batch125_rk2_99", |b| {
        b.iter(|| {
            let ll = model
                .log_likelihood(black_box(&batch), config.train_method, config.n_steps)
                .expect("forward");
            let loss = ll.mean_all().and_then(|l| l.neg()).expect("loss");
            opt.backward_step(&loss).expect("backward");
        })
    });
    group.finish();
}

/// The Criterion entry point, in a private module: the macro's `pub fn` carries no docs.
mod entry {
    criterion::criterion_group!(benches, super::ode_training_step);
}
criterion_main!(entry::benches);
