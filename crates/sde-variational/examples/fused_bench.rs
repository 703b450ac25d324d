//! Times `(v, ∂v/∂x)` of the ODE experiment's 2-64-64-1 field, forward and backward, batch
//! 125, f32: the unfused candle path (`divergence_exact`) against the fused kernel
//! (`fused::value_and_dx`), one evaluation at a time and as a full 99-step RK2 integration of
//! the augmented CNF state (198 evaluations, back-propagated once, as in one training step).
//!
//! `CANDLE_NUM_THREADS=1 cargo run --release -p sde-variational --example fused_bench [reps]`

use std::hint::black_box;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sde_variational::fused::{pack_params, parallel, set_parallel, value_and_dx};
use sde_variational::mlp::{divergence_exact, Activation, Mlp, MlpConfig};

const BATCH: usize = 125;
const N_STEPS: usize = 99;

type Res<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Median over `rounds` of the mean seconds per call over `reps` calls of `f`.
fn time(rounds: usize, reps: usize, mut f: impl FnMut() -> Res<()>) -> Res<f64> {
    for _ in 0..reps.min(20) {
        f()?;
    }
    let mut per_call = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..reps {
            f()?;
        }
        per_call.push(start.elapsed().as_secs_f64() / reps as f64);
    }
    per_call.sort_by(f64::total_cmp);
    Ok(per_call[rounds / 2])
}

fn main() -> Res<()> {
    let reps: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200);
    // A second argument `fused` skips the unfused path, `fused1` also the two-thread runs
    // (for profiling the kernel).
    let mode = std::env::args().nth(2).unwrap_or_default();
    let only_fused = mode.starts_with("fused");
    println!(
        "candle threads: {} (set CANDLE_NUM_THREADS=1 for the reference setting)",
        std::env::var("CANDLE_NUM_THREADS").unwrap_or_else(|_| "unset".into())
    );
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let mut rng = StdRng::seed_from_u64(0);
    let config = MlpConfig::reference(Activation::Identity);
    let mlp = Mlp::new(&config, &varmap, "v", DType::F32, &dev, &mut rng)?;
    let draw = |rng: &mut StdRng, n: usize, scale: f64| -> Res<Tensor> {
        let v: Vec<f32> = (0..n)
            .map(|_| rng.random_range(-scale..scale) as f32)
            .collect();
        Ok(Tensor::from_vec(v, (n / 2, 2), &dev)?)
    };
    let state = Var::from_tensor(&draw(&mut rng, 2 * BATCH, 3.0)?)?;
    let w = draw(&mut rng, 2 * BATCH, 1.0)?;
    let t = 0.4;

    let h = -1.0 / N_STEPS as f64;
    let step_reps = (reps / 20).max(3);

    // One evaluation, forward and backward to the weights and the state.
    let unfused_eval = time(7, if only_fused { 1 } else { reps }, || {
        let x = state.as_tensor().narrow(1, 0, 1)?;
        let (v, div) = divergence_exact(&mlp, &x, t)?;
        let out = Tensor::cat(&[&v, &div], 1)?;
        black_box(out.mul(&w)?.sum_all()?.backward()?);
        Ok(())
    })?;
    // A whole training step's integration: RK2 midpoint on [x, ∫∂v/∂x] from t = 1 to 0,
    // 198 evaluations, then one backward pass.
    let unfused_step = time(
        if only_fused { 1 } else { 5 },
        if only_fused { 1 } else { step_reps },
        || {
            let mut s = state.as_tensor().clone();
            let field = |s: &Tensor, t: f64| -> Res<Tensor> {
                let (v, div) = divergence_exact(&mlp, &s.narrow(1, 0, 1)?, t)?;
                Ok(Tensor::cat(&[&v, &div], 1)?)
            };
            for n in 0..N_STEPS {
                let t0 = 1.0 + n as f64 * h;
                let k1 = field(&s, t0)?;
                let mid = (&s + k1.affine(0.5 * h, 0.0)?)?;
                let k2 = field(&mid, t0 + 0.5 * h)?;
                s = (&s + k2.affine(h, 0.0)?)?;
            }
            black_box(s.mul(&w)?.sum_all()?.backward()?);
            Ok(())
        },
    )?;
    println!("batch {BATCH}, f32, 2-64-64-1; forward + backward:");
    println!(
        "  unfused            {:7.1} µs per evaluation   {:7.2} ms per 99-step RK2 integration",
        1e6 * unfused_eval,
        1e3 * unfused_step
    );
    let val = draw(&mut rng, 2 * 8000, 3.0)?;
    let threads: &[bool] = if parallel() && mode != "fused1" {
        &[false, true]
    } else {
        &[false]
    };
    for &two in threads {
        set_parallel(two);
        let fused_eval = time(7, reps, || {
            let params = pack_params(&mlp)?;
            let out = value_and_dx(&mlp, state.as_tensor(), &params, t)?;
            black_box(out.mul(&w)?.sum_all()?.backward()?);
            Ok(())
        })?;
        let fused_fwd = time(7, reps, || {
            let params = pack_params(&mlp)?.detach();
            black_box(value_and_dx(&mlp, state.as_tensor(), &params, t)?);
            Ok(())
        })?;
        let fused_step = time(5, step_reps, || {
            let params = pack_params(&mlp)?;
            let mut s = state.as_tensor().clone();
            for n in 0..N_STEPS {
                let t0 = 1.0 + n as f64 * h;
                // [v, ∂v/∂x] is exactly the derivative of the augmented state [x, a].
                let k1 = value_and_dx(&mlp, &s, &params, t0)?;
                let mid = (&s + k1.affine(0.5 * h, 0.0)?)?;
                let k2 = value_and_dx(&mlp, &mid, &params, t0 + 0.5 * h)?;
                s = (&s + k2.affine(h, 0.0)?)?;
            }
            black_box(s.mul(&w)?.sum_all()?.backward()?);
            Ok(())
        })?;
        let val_fwd = time(5, (reps / 20).max(3), || {
            let params = pack_params(&mlp)?.detach();
            black_box(value_and_dx(&mlp, &val, &params, t)?);
            Ok(())
        })?;
        let name = if two {
            "fused, 2 threads"
        } else {
            "fused, 1 thread "
        };
        println!(
            "  {name}   {:7.1} µs per evaluation   {:7.2} ms per 99-step RK2 integration ({:.1}× faster; forward alone {:.1} µs, 198 × eval = {:.1} ms; 8,000-point forward {:.2} ms)",
            1e6 * fused_eval,
            1e3 * fused_step,
            unfused_step / fused_step,
            1e6 * fused_fwd,
            198e3 * fused_eval,
            1e3 * val_fwd,
        );
    }
    Ok(())
}
