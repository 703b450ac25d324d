//! One optimiser step of each training shape the paper's models use, all on 2-64-64-1 tanh
//! networks at batch 125 (docs/REFERENCE.md, "Shared setting"), forward + backward + Adam:
//!
//! - `train_step_ode`: the ODE experiment (docs/REFERENCE.md §1), 99 RK2 steps of the augmented CNF,
//!   198 engine evaluations of `[v, ∂v/∂x]` at scalar times. Reference PyTorch: 84 ms.
//! - `train_step_mlp`: one plain evaluation at one time per row and a squared error (the
//!   flow-matching shape, docs/REFERENCE.md §4). Reference PyTorch: 0.71 ms; candle's generic path
//!   about 0.42 ms.
//! - `train_step_sde`: the SDE shape (docs/REFERENCE.md §2): the networks `A(y, t)`, `B(y, t)` with
//!   `∂/∂t` tangents, the softplus diffusion `σ(x, t)` with `∂/∂x`, the drift `f(x, t)`, and the
//!   drift-matching term built from them. Reference PyTorch: 3.9 ms.
//!
//! `cargo xtask bench` reports them as `train_step_{ode,mlp,sde}_ms` in `summary.json`.

use std::hint::black_box;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use criterion::{criterion_main, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use sde_experiments::{ode, Dataset, TrainRng};
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

/// The SDE experiment's drift-matching term (docs/MATH.md §4–5) with the reference
/// parameterisation: `α = t y + (1 − t) A`, `β = t β₁ + (1 − t) softplus(B)`, `x = α + β ε`,
/// `f_q = ∂α/∂t + (∂β/∂t / β)(x − α) + ½ ∂σ²/∂x − ½ σ² (x − α)/β²`, loss `(f − f_q)² / 2σ²`.
fn sde_step(c: &mut Criterion) {
    let mut rng = TrainRng::seed_from_u64(2);
    let vars = VarMap::new();
    let a = net(&vars, "alpha", Activation::Identity, &mut rng);
    let bnet = net(&vars, "beta", Activation::Softplus, &mut rng);
    let sigma = net(&vars, "sigma", Activation::Softplus, &mut rng);
    let f = net(&vars, "drift", Activation::Identity, &mut rng);
    let (y, t, eps) = (
        column(&mut rng, -8.0, 8.0),
        column(&mut rng, 0.0, 1.0),
        column(&mut rng, -2.0, 2.0),
    );
    let beta1 = 0.1f64;
    let mut opt = adam(&vars, 1e-3);
    let step = |opt: &mut Adam| -> candle_core::Result<()> {
        let one_minus_t = t.affine(-1.0, 1.0)?;
        let (av, ad) = value_and_tangents(&a, &y, Time::PerSample(&t), &[1]).map_err(err)?;
        let (bv, bd) = value_and_tangents(&bnet, &y, Time::PerSample(&t), &[1]).map_err(err)?;
        let alpha = ((&t * &y)? + (&one_minus_t * &av)?)?;
        let beta = ((&t * beta1)? + (&one_minus_t * &bv)?)?;
        let dalpha = ((&y - &av)? + (&one_minus_t * &ad[0])?)?;
        let dbeta = (bv.affine(-1.0, beta1)? + (&one_minus_t * &bd[0])?)?;
        let x = (&alpha + (&beta * &eps)?)?;
        let (s, sd) = value_and_tangents(&sigma, &x, Time::PerSample(&t), &[0]).map_err(err)?;
        let (fv, _) = value_and_tangents(&f, &x, Time::PerSample(&t), &[]).map_err(err)?;
        let s2 = s.sqr()?;
        let dev = (&x - &alpha)?;
        let fq = ((&dalpha + (&dbeta * &eps)?)? + (&s * &sd[0])?)?
            .sub(&((&s2 * &dev)? / (&beta.sqr()? * 2.0)?)?)?;
        let loss = ((fv - fq)?.sqr()? / (s2 * 2.0)?)?.mean_all()?;
        opt.step(&loss.backward()?)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(())
    };
    let mut group = c.benchmark_group("train_step_sde");
    group.throughput(Throughput::Elements(1));
    group.bench_function("batch125", |b| b.iter(|| step(&mut opt).expect("step")));
    group.finish();
}

fn err(e: sde_variational::Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// The Criterion entry point, in a private module: the macro's `pub fn` carries no docs.
mod entry {
    criterion::criterion_group!(benches, super::mlp_step, super::sde_step, super::ode_step);
}
criterion_main!(entry::benches);
