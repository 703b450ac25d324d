//! Where the time of a training step goes, for the step shapes of the paper's models
//! (2-64-64-1 tanh networks, batch 125, f32, one time per row):
//!
//! - `plain`: one network, no tangent, a squared error (flow matching);
//! - `sde`: the SDE experiment's step (`A`, `B` at `(y, t)` with `∂/∂t` and at `(y, 0)`, drift
//!   and softplus `σ` at `(x, t)` with `∂σ/∂x`, the ELBO's three terms), through the fused
//!   `network_elbo` and through the generic `sde_elbo`;
//! - the generic candle path of the plain step, for comparison;
//! - `ode`: the ODE experiment's step (99 midpoint steps of the augmented CNF, backward, Adam),
//!   through the generic solver with one fused op per evaluation and as one `engine::solve`.
//!
//! Each part is timed over many repetitions:
//! `cargo run --release -p sde-variational --example engine_profile [reps]`.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sde_core::VectorField;
use sde_solvers::{OdeMethod, TimeGrid};
use sde_variational::engine::{evaluate, solve, value_and_tangents};
use sde_variational::network_elbo::network_gaussian_elbo;
use sde_variational::optim::{sorted_vars, Adam, AdamConfig};
use sde_variational::{
    sde_elbo, with_time, Activation, GaussianLikelihood, Mlp, MlpConfig, NetworkGaussian,
    NeuralSde, Time,
};

const BATCH: usize = 125;

fn column(rng: &mut StdRng, lo: f64, hi: f64) -> candle_core::Result<Tensor> {
    let v: Vec<f32> = (0..BATCH)
        .map(|_| rng.random_range(lo..hi) as f32)
        .collect();
    Tensor::from_vec(v, (BATCH, 1), &Device::Cpu)
}

/// Seconds per run of `f`: the fastest of ten rounds of `reps / 10` runs each, after a
/// warm-up round. The minimum is robust to the interference of a shared machine, which only
/// ever adds time.
fn time(reps: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let per_round = (reps / 10).max(1);
    for _ in 0..per_round {
        f()?;
    }
    let mut best = f64::INFINITY;
    for _ in 0..10 {
        let t0 = Instant::now();
        for _ in 0..per_round {
            f()?;
        }
        best = best.min(t0.elapsed().as_secs_f64() / per_round as f64);
    }
    Ok(best)
}

fn us(s: f64) -> String {
    format!("{:8.1} µs", 1e6 * s)
}

/// The augmented CNF field `d/dt [x, a] = [v, ∂v/∂x]`, one fused op per evaluation.
struct Augmented<'a>(&'a Mlp);

impl VectorField<Tensor> for Augmented<'_> {
    fn velocity(&self, xa: &Tensor, t: f64) -> sde_core::Result<Tensor> {
        evaluate(self.0, xa, Time::Scalar(t), &[0]).map_err(|e| sde_core::Error::Field(Box::new(e)))
    }
}

fn main() -> anyhow::Result<()> {
    let reps: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2000);
    if std::env::args().nth(2).as_deref() == Some("serial") {
        sde_variational::engine::set_parallel(false);
        println!("(one thread)");
    }
    let mut rng = StdRng::seed_from_u64(0);
    let dev = Device::Cpu;
    let net = |vars: &VarMap, name: &str, out: Activation, rng: &mut StdRng| {
        Mlp::new(
            &MlpConfig::reference(out),
            vars,
            name,
            DType::F32,
            &dev,
            rng,
        )
    };

    // The plain step.
    let vars = VarMap::new();
    let v = net(&vars, "v", Activation::Identity, &mut rng)?;
    let (x, t, u) = (
        column(&mut rng, -3.0, 3.0)?,
        column(&mut rng, 0.0, 1.0)?,
        column(&mut rng, -3.0, 3.0)?,
    );
    let mut adam = Adam::new(sorted_vars(&vars), AdamConfig::default())?;
    let forward = time(reps, || {
        value_and_tangents(&v, &x, Time::PerSample(&t), &[])?;
        Ok(())
    })?;
    let with_loss = time(reps, || {
        let (value, _) = value_and_tangents(&v, &x, Time::PerSample(&t), &[])?;
        (value - &u)?.sqr()?.mean_all()?;
        Ok(())
    })?;
    let with_backward = time(reps, || {
        let (value, _) = value_and_tangents(&v, &x, Time::PerSample(&t), &[])?;
        (value - &u)?.sqr()?.mean_all()?.backward()?;
        Ok(())
    })?;
    let whole = time(reps, || {
        let (value, _) = value_and_tangents(&v, &x, Time::PerSample(&t), &[])?;
        let grads = (value - &u)?.sqr()?.mean_all()?.backward()?;
        adam.step(&grads)?;
        Ok(())
    })?;
    let generic = time(reps, || {
        let rows = with_time(&x, Time::PerSample(&t))?;
        let value = v.forward(&rows)?;
        let grads = (value - &u)?.sqr()?.mean_all()?.backward()?;
        adam.step(&grads)?;
        Ok(())
    })?;
    println!("plain 2-64-64-1 step, batch {BATCH} (reference PyTorch flow matching 710 µs):");
    println!("  fused forward            {}", us(forward));
    println!("  + loss (3 ops)           {}", us(with_loss - forward));
    println!(
        "  + backward               {}",
        us(with_backward - with_loss)
    );
    println!("  + Adam                   {}", us(whole - with_backward));
    println!("  whole step               {}", us(whole));
    println!("  generic candle path step {}", us(generic));

    // The SDE experiment's step: the ELBO's three terms through the fused path
    // (`network_elbo`) and through the generic `sde_elbo`, then backward and Adam.
    let vars = VarMap::new();
    let a = net(&vars, "q.a", Activation::Identity, &mut rng)?;
    let b = net(&vars, "q.b", Activation::Softplus, &mut rng)?;
    let f = net(&vars, "drift", Activation::Identity, &mut rng)?;
    let sigma = net(&vars, "sigma", Activation::Softplus, &mut rng)?;
    let log_beta1 = NetworkGaussian::log_beta1_var(0.1, DType::F32, &dev)?;
    let mut params = sorted_vars(&vars);
    params.push(("q.log_beta1".into(), log_beta1.clone()));
    let process = NetworkGaussian::new(a, b, log_beta1.as_tensor().clone())?;
    let sde = NeuralSde::new(f, sigma)?;
    let (y, eps) = (column(&mut rng, -8.0, 8.0)?, column(&mut rng, -2.0, 2.0)?);
    let mut adam = Adam::new(params, AdamConfig::default())?;
    let loss = |fused: bool| -> anyhow::Result<Tensor> {
        let terms = if fused {
            network_gaussian_elbo(&process, &sde, &y, &t, &eps)?
        } else {
            let likelihood = GaussianLikelihood::new(process.beta1()?)?;
            sde_elbo(&process, &sde, &y, &t, &eps, &likelihood)?
        };
        Ok(terms.elbo()?.mean_all()?.neg()?)
    };
    println!("SDE experiment's step, 4 networks, batch {BATCH} (reference PyTorch 3,900 µs):");
    for (name, fused) in [("generic sde_elbo  ", false), ("fused network_elbo", true)] {
        let forward = time(reps, || {
            loss(fused)?;
            Ok(())
        })?;
        let with_backward = time(reps, || {
            loss(fused)?.backward()?;
            Ok(())
        })?;
        let whole = time(reps, || {
            adam.step(&loss(fused)?.backward()?)?;
            Ok(())
        })?;
        println!(
            "  {name}: loss {}, backward {}, Adam {}, whole {}",
            us(forward),
            us(with_backward - forward),
            us(whole - with_backward),
            us(whole)
        );
    }

    // The ODE step: 99 RK2 steps of the augmented CNF [x, a], back-propagated, through the
    // generic solver (one fused op per evaluation, candle ops between) and as one fused solve.
    let vars = VarMap::new();
    let ode = net(&vars, "ode", Activation::Identity, &mut rng)?;
    let mut adam = Adam::new(sorted_vars(&vars), AdamConfig::default())?;
    let state = Tensor::cat(&[&y, &Tensor::zeros((BATCH, 1), DType::F32, &dev)?], 1)?;
    let grid = TimeGrid::uniform(1.0, 0.0, 99)?;
    let per_eval = Augmented(&ode);
    let ode_reps = (reps / 50).max(10);
    let step = |fused: bool, backward: bool, adam: &mut Adam| -> anyhow::Result<()> {
        let end = if fused {
            solve(&ode, &state, &[0], OdeMethod::Midpoint, &grid)?
        } else {
            OdeMethod::Midpoint
                .solve(&per_eval, state.clone(), &grid, false)?
                .into_last()
        };
        if backward {
            let loss = end.narrow(1, 1, 1)?.mean_all()?;
            adam.step(&loss.backward()?)?;
        }
        Ok(())
    };
    println!("ODE step, 99 RK2 steps, batch {BATCH} (reference PyTorch 84,000 µs):");
    for (name, fused) in [("per-evaluation ops", false), ("one fused solve   ", true)] {
        let forward = time(ode_reps, || step(fused, false, &mut adam))?;
        let whole = time(ode_reps, || step(fused, true, &mut adam))?;
        println!(
            "  {name}: forward {}, backward + Adam {}, whole {}",
            us(forward),
            us(whole - forward),
            us(whole)
        );
    }
    Ok(())
}
