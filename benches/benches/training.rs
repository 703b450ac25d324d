//! One optimiser step of each training shape the paper's models use, all on 2-64-64-1 tanh
//! networks at batch 125 (docs/REFERENCE.md, "Shared setting"), forward + backward + Adam:
//!
//! - `train_step_ode`: the ODE experiment (docs/REFERENCE.md §1), 99 RK2 steps of the augmented CNF,
//!   198 engine evaluations of `[v, ∂v/∂x]` at scalar times. Reference PyTorch: 84 ms.
//! - `train_step_mlp`: one plain evaluation at one time per row and a squared error (the
//!   flow-matching shape, docs/REFERENCE.md §4). Reference PyTorch: 0.71 ms; candle's generic path
//!   about 0.42 ms.
//! - `train_step_sde`: the SDE experiment's step (docs/REFERENCE.md §2) as it trains: the
//!   networks `A`, `B` at `(y, t)` with `∂/∂t` and at `(y, 0)`, the drift and the softplus
//!   diffusion at `(x, t)` with `∂σ/∂x`, the ELBO's three terms, backward, Adam. Reference
//!   PyTorch: 3.9 ms.
//!
//! `cargo xtask bench` reports them as `train_step_{ode,mlp,sde}_ms` in `summary.json`.

use std::hint::black_box;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use criterion::{criterion_main, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use sde_experiments::train::Objective;
use sde_experiments::{ode, sde, Dataset, TrainRng};
use sde_variational::engine::value_and_tangents;
use sde_variational::optim::{sorted_vars, Adam, AdamConfig};
use sde_variational::{Activation, Mlp, MlpConfig, Time};

const BATCH: usize = 125;

fn column(rng: &mut TrainRng, lo: f64, hi: f64) -> Tensor {
    let v: Vec<f32> = (0..BATCH)
        .map(|_| rng.random_range(lo..hi) as f32)
        .collect();
    Tensor::from_vec(v, (BATCH, 1), &Device::Cpu).expect("column")
}

fn net(vars: &VarMap, name: &str, output: Activation, rng: &mut TrainRng) -> Mlp {
    Mlp::new(
        &MlpConfig::reference(output),
        vars,
        name,
        DType::F32,
        &Device::Cpu,
        rng,
    )
    .expect("network")
}

fn adam(vars: &VarMap, lr: f64) -> Adam {
    Adam::new(
        sorted_vars(vars),
        AdamConfig {
            lr,
            ..AdamConfig::default()
        },
    )
    .expect("optimiser")
}

fn ode_step(c: &mut Criterion) {
    let config = ode::OdeConfig::reference();
    let (model, vars) = ode::build_model(&config, &Device::Cpu).expect("model");
    let data = Dataset::paper(0);
    let batch = Tensor::from_slice(&data.train[..BATCH], (BATCH, 1), &Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F32))
        .expect("batch");
    let mut opt = adam(&vars, 1e-2);
    let mut group = c.benchmark_group("train_step_ode");
    group.sample_size(20);
    // One element = one optimizer step.
    group.throughput(Throughput::Elements(1));
    group.bench_function("batch125_rk2_99", |b| {
        b.iter(|| {
            let ll = model
                .log_likelihood(black_box(&batch), config.train_method, config.n_steps)
                .expect("forward");
            let loss = ll.mean_all().and_then(|l| l.neg()).expect("loss");
            opt.step(&loss.backward().expect("backward")).expect("step");
        })
    });
    group.finish();
}

fn mlp_step(c: &mut Criterion) {
    let mut rng = TrainRng::seed_from_u64(1);
    let vars = VarMap::new();
    let v = net(&vars, "v", Activation::Identity, &mut rng);
    let (x, t, u) = (
        column(&mut rng, -3.0, 3.0),
        column(&mut rng, 0.0, 1.0),
        column(&mut rng, -3.0, 3.0),
    );
    let mut opt = adam(&vars, 1e-3);
    let mut group = c.benchmark_group("train_step_mlp");
    group.throughput(Throughput::Elements(1));
    group.bench_function("batch125", |b| {
        b.iter(|| {
            let (value, _) =
                value_and_tangents(&v, black_box(&x), Time::PerSample(&t), &[]).expect("forward");
            let loss = (value - &u)
                .and_then(|d| d.sqr())
                .and_then(|d| d.mean_all())
                .expect("loss");
            opt.step(&loss.backward().expect("backward")).expect("step");
        })
    });
    group.finish();
}

/// The SDE experiment's training step (docs/REFERENCE.md §2) as `cargo xtask reproduce` runs
/// it: its objective's loss (the SDE ELBO's three terms through
/// `sde_variational::network_elbo`: three engine group evaluations and three fused ops), the
/// backward pass and Adam, on a batch of the paper's data with fresh `(t, ε)` draws.
fn sde_step(c: &mut Criterion) {
    let config = sde::SdeConfig::reference();
    let model = sde::build_model(&config, &Device::Cpu).expect("the reference SDE model");
    let mut objective = sde::SdeObjective {
        model,
        val_draws: config.train_val_draws,
    };
    let mut opt = Adam::new(objective.parameters(), config.train.adam).expect("Adam");
    let data = Dataset::paper(0);
    let batch: Vec<f64> = data.train[..BATCH].to_vec();
    let batch = Tensor::from_vec(batch, (BATCH, 1), &Device::Cpu)
        .and_then(|b| b.to_dtype(DType::F32))
        .expect("a batch");
    let mut rng = TrainRng::seed_from_u64(2);
    let mut step = || -> sde_experiments::Result<()> {
        let out = objective.loss(&batch, &mut rng)?;
        opt.step(&out.loss.backward()?)?;
        Ok(())
    };
    let mut group = c.benchmark_group("train_step_sde");
    group.throughput(Throughput::Elements(1));
    group.bench_function("batch125", |b| b.iter(|| step().expect("step")));
    group.finish();
}

/// The Criterion entry point, in a private module: the macro's `pub fn` carries no docs.
mod entry {
    criterion::criterion_group!(benches, super::mlp_step, super::sde_step, super::ode_step);
}
criterion_main!(entry::benches);
