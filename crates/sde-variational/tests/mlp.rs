//! Tests of `sde_variational::mlp`: forward-mode derivatives against central finite
//! differences, back-propagation through tangents, divergences, seeded initialisation and
//! input validation.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use common::{rel_err, values};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use sde_variational::mlp::{
    divergence_exact, divergence_hutchinson, softplus, with_time, Activation, Mlp, MlpConfig, Time,
};
use sde_variational::{Error, Result};

const ACTIVATIONS: [Activation; 2] = [Activation::Identity, Activation::Softplus];

fn mlp(widths: &[usize], output: Activation, dtype: DType, seed: u64) -> Result<(Mlp, VarMap)> {
    let varmap = VarMap::new();
    let mut rng = StdRng::seed_from_u64(seed);
    let config = MlpConfig::new(widths.to_vec(), output);
    let net = Mlp::new(&config, &varmap, "net", dtype, &Device::Cpu, &mut rng)?;
    Ok((net, varmap))
}

/// A `(rows, cols)` tensor of standard normals times `scale`, drawn in `f64` on the host.
fn normal(rows: usize, cols: usize, scale: f64, dtype: DType, rng: &mut StdRng) -> Result<Tensor> {
    let values: Vec<f64> = (0..rows * cols)
        .map(|_| scale * rng.sample::<f64, _>(StandardNormal))
        .collect();
    Ok(Tensor::from_vec(values, (rows, cols), &Device::Cpu)?.to_dtype(dtype)?)
}

/// FD step and tolerance per dtype. Central differences err by `h² f'''/6` (truncation)
/// plus about `ε |f| / h` (rounding), smallest near `h ≈ ε^{1/3}`. f64: `ε ≈ 1.1e-16`, so
/// `h = 1e-5` gives ≈ 1e-10 + 1e-11, far inside 1e-6. f32: `ε ≈ 6e-8` (round-off of the
/// forward pass itself is a few ε), so `h = 1e-2` gives ≈ 2e-5 + 1e-5, inside 1e-3 with room
/// for `f'''` of order 10 in these unit-scale networks.
fn fd_step_and_tol(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F64 => (1e-5, 1e-6),
        _ => (1e-2, 1e-3),
    }
}

/// `(f(x + h u) − f(x − h u)) / 2h`.
fn central_difference(net: &Mlp, xs: &Tensor, u: &Tensor, h: f64) -> Result<Tensor> {
    let plus = net.forward(&(xs + (u * h)?)?)?;
    let minus = net.forward(&(xs - (u * h)?)?)?;
    Ok(((plus - minus)? / (2.0 * h))?)
}

fn unit(batch: usize, width: usize, k: usize, dtype: DType) -> Result<Tensor> {
    let mut values = vec![0.0f64; batch * width];
    for row in 0..batch {
        values[row * width + k] = 1.0;
    }
    Ok(Tensor::from_vec(values, (batch, width), &Device::Cpu)?.to_dtype(dtype)?)
}

#[test]
fn coordinate_tangents_match_central_differences() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(1);
    for dtype in [DType::F32, DType::F64] {
        let (h, tol) = fd_step_and_tol(dtype);
        for output in ACTIVATIONS {
            // The reference [x, t] network (coordinate 0 is x, 1 is t), a wider-input one,
            // and a single affine layer (tangents that never meet a tanh).
            for (seed, widths) in [
                (10, vec![2, 64, 64, 1]),
                (11, vec![4, 16, 8, 3]),
                (12, vec![3, 2]),
            ] {
                let (net, _vars) = mlp(&widths, output, dtype, seed)?;
                let n_in = widths[0];
                let xs = normal(17, n_in, 1.0, dtype, &mut rng)?;
                let dirs: Vec<usize> = (0..n_in).collect();
                let (ys, tangents) = net.forward_with_tangents(&xs, &dirs)?;
                assert_eq!(values(&ys)?, values(&net.forward(&xs)?)?);
                assert_eq!(tangents.len(), n_in);
                for (k, tangent) in tangents.iter().enumerate() {
                    let fd = central_difference(&net, &xs, &unit(17, n_in, k, dtype)?, h)?;
                    let err = rel_err(tangent, &fd)?;
                    assert!(
                        err < tol,
                        "{dtype:?} {output:?} {widths:?} ∂/∂x_{k}: {err:e}"
                    );
                    // One direction alone gives the same tangent.
                    let (_, single) = net.forward_with_tangents(&xs, &[k])?;
                    assert!(rel_err(&single[0], tangent)? < 1e-6);
                }
                // Out-of-order and repeated directions.
                let odd: Vec<usize> = (0..n_in).rev().chain([0]).collect();
                let (_, gathered) = net.forward_with_tangents(&xs, &odd)?;
                for (tangent, &k) in gathered.iter().zip(&odd) {
                    assert!(rel_err(tangent, &tangents[k])? < 1e-6);
                }
            }
        }
    }
    Ok(())
}

#[test]
fn jacobian_vector_products_match_central_differences() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(2);
    for dtype in [DType::F32, DType::F64] {
        let (h, tol) = fd_step_and_tol(dtype);
        for output in ACTIVATIONS {
            let (net, _vars) = mlp(&[3, 32, 32, 2], output, dtype, 20)?;
            let xs = normal(11, 3, 1.0, dtype, &mut rng)?;
            let us: Vec<Tensor> = (0..3)
                .map(|_| normal(11, 3, 1.0, dtype, &mut rng))
                .collect::<Result<_>>()?;
            // One tangent alone and several together.
            let (_, one) = net.forward_jvp(&xs, &us[..1])?;
            let (ys, many) = net.forward_jvp(&xs, &us)?;
            assert_eq!(values(&ys)?, values(&net.forward(&xs)?)?);
            assert!(rel_err(&one[0], &many[0])? < 1e-6);
            for (u, jvp) in us.iter().zip(&many) {
                let fd = central_difference(&net, &xs, u, h)?;
                let err = rel_err(jvp, &fd)?;
                assert!(err < tol, "{dtype:?} {output:?} jvp: {err:e}");
            }
        }
    }
    Ok(())
}

/// Reads, changes and restores one entry of a variable.
fn nudge(var: &Var, index: usize, delta: f64) -> Result<()> {
    let shape = var.shape().clone();
    let mut data = values(var.as_tensor())?;
    data[index] += delta;
    var.set(&Tensor::from_vec(data, shape, &Device::Cpu)?)?;
    Ok(())
}

#[test]
fn tangents_back_propagate_to_the_weights() -> Result<()> {
    // f64 with h = 1e-5: as in `fd_step_and_tol`, FD error ≈ 1e-10 relative, inside 1e-6.
    let h = 1e-5;
    for output in ACTIVATIONS {
        let (net, varmap) = mlp(&[2, 16, 16, 1], output, DType::F64, 30)?;
        let mut rng = StdRng::seed_from_u64(3);
        let xs = normal(9, 2, 1.0, DType::F64, &mut rng)?;
        // L = Σ (∂f/∂t)² + Σ ∂f/∂x: the kind of loss term a divergence or ∂α/∂t makes.
        let loss = |net: &Mlp| -> Result<Tensor> {
            let (_, tangents) = net.forward_with_tangents(&xs, &[0, 1])?;
            Ok((tangents[1].sqr()?.sum_all()? + tangents[0].sum_all()?)?)
        };
        let grads = loss(&net)?.backward()?;
        let data = varmap.data().lock().expect("test holds the only lock");
        let var = &data["net.params"];
        // Flat layout of [2, 16, 16, 1]: W₀ 0..32, b₀ 32..48, W₁ 48..304, b₁ 304..320,
        // W₂ 320..336, b₂ 336.
        for (name, index) in [
            ("W0", 1),
            ("b0", 32 + 3),
            ("W1", 48 + 40),
            ("b1", 304),
            ("W2", 320 + 5),
            // The last bias enters the tangent only through sigmoid(z) (softplus); for a
            // linear output its gradient must be exactly zero.
            ("b2", 336),
        ] {
            let grad = values(grads.get(var.as_tensor()).expect("tracked"))?[index];
            nudge(var, index, h)?;
            let plus = loss(&net)?.to_scalar::<f64>()?;
            nudge(var, index, -2.0 * h)?;
            let minus = loss(&net)?.to_scalar::<f64>()?;
            nudge(var, index, h)?;
            let fd = (plus - minus) / (2.0 * h);
            if name == "b2" && output == Activation::Identity {
                assert_eq!(grad, 0.0);
                assert!(fd.abs() < 1e-8, "{fd}");
            } else {
                assert!(
                    (grad - fd).abs() <= 1e-6 * fd.abs().max(1e-3),
                    "{output:?} {name}[{index}]: backprop {grad} vs FD {fd}"
                );
            }
        }
    }
    Ok(())
}

/// `Σ_k (v_k(x + h e_k) − v_k(x − h e_k)) / 2h` at fixed t.
fn fd_trace(net: &Mlp, xs: &Tensor, t: f64, h: f64) -> Result<Vec<f64>> {
    let (batch, d) = xs.dims2()?;
    let mut trace = vec![0.0; batch];
    for k in 0..d {
        let e = unit(batch, d, k, DType::F64)?;
        let plus = values(&net.forward(&with_time(&(xs + (&e * h)?)?, Time::Scalar(t))?)?)?;
        let minus = values(&net.forward(&with_time(&(xs - (&e * h)?)?, Time::Scalar(t))?)?)?;
        for b in 0..batch {
            trace[b] += (plus[b * d + k] - minus[b * d + k]) / (2.0 * h);
        }
    }
    Ok(trace)
}

#[test]
fn exact_divergence_is_the_trace_of_the_jacobian() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(4);
    for d in [1, 2, 3] {
        for output in ACTIVATIONS {
            let (net, _vars) = mlp(&[d + 1, 32, 32, d], output, DType::F64, 40 + d as u64)?;
            let xs = normal(13, d, 1.5, DType::F64, &mut rng)?;
            let t = 0.3;
            let (vs, div) = divergence_exact(&net, &xs, t)?;
            assert_eq!(div.dims(), &[13, 1]);
            assert_eq!(
                values(&vs)?,
                values(&net.forward(&with_time(&xs, Time::Scalar(t))?)?)?
            );
            // f64, h = 1e-5: see `fd_step_and_tol`.
            let fd = Tensor::from_vec(fd_trace(&net, &xs, t, 1e-5)?, (13, 1), &Device::Cpu)?;
            let err = rel_err(&div, &fd)?;
            assert!(err < 1e-6, "d = {d} {output:?}: {err:e}");
            // A per-sample time column equal to t gives the same numbers.
            let ts = Tensor::full(t, (13, 1), &Device::Cpu)?;
            let (_, div_ts) = divergence_exact(&net, &xs, &ts)?;
            assert_eq!(values(&div_ts)?, values(&div)?);
        }
    }
    Ok(())
}

#[test]
fn hutchinson_averages_to_the_exact_divergence() -> Result<()> {
    let (batch, n_draws) = (6, 4000);
    for d in [1, 2, 3] {
        let (net, _vars) = mlp(
            &[d + 1, 32, 32, d],
            Activation::Identity,
            DType::F64,
            50 + d as u64,
        )?;
        let mut rng = StdRng::seed_from_u64(5);
        let xs = normal(batch, d, 1.5, DType::F64, &mut rng)?;
        let (_, exact) = divergence_exact(&net, &xs, 0.7)?;
        let exact = values(&exact)?;
        // The full Jacobian J[b][i][k] = ∂v_i/∂x_k, for the estimator's variance.
        let dirs: Vec<usize> = (0..d).collect();
        let (_, columns) = net.forward_with_tangents(&with_time(&xs, Time::Scalar(0.7))?, &dirs)?;
        let columns: Vec<Vec<f64>> = columns.iter().map(values).collect::<Result<_>>()?;
        // All draws in one batch: the points repeated n_draws times, one ε per row.
        let repeated = xs.repeat((n_draws, 1))?;
        let mut draw_rng = StdRng::seed_from_u64(6);
        let (_, est) = divergence_hutchinson(&net, &repeated, 0.7, &mut draw_rng)?;
        let est = values(&est)?;
        for b in 0..batch {
            let mean = (0..n_draws).map(|r| est[r * batch + b]).sum::<f64>() / n_draws as f64;
            // Var(εᵀJε) = Σ_{i<j} (J_ij + J_ji)² for Rademacher ε; zero for d = 1.
            let mut variance = 0.0;
            for i in 0..d {
                for j in i + 1..d {
                    let sym = columns[j][b * d + i] + columns[i][b * d + j];
                    variance += sym * sym;
                }
            }
            // Five standard errors of the mean (a 6e-7 chance per point of a false alarm
            // under the CLT) plus round-off for the exact d = 1 case.
            let tol = 5.0 * (variance / n_draws as f64).sqrt() + 1e-12 * exact[b].abs().max(1.0);
            assert!(
                (mean - exact[b]).abs() <= tol,
                "d = {d}, point {b}: mean {mean} vs exact {} (tol {tol:e})",
                exact[b]
            );
            if d > 1 {
                assert!(
                    variance > 0.0,
                    "a non-trivial test needs a random estimator"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn hutchinson_is_reproducible_from_the_seed() -> Result<()> {
    let (net, _vars) = mlp(&[3, 8, 2], Activation::Softplus, DType::F32, 60)?;
    let xs = normal(10, 2, 1.0, DType::F32, &mut StdRng::seed_from_u64(7))?;
    let draw = |seed| -> Result<Vec<f64>> {
        let (_, div) = divergence_hutchinson(&net, &xs, 0.5, &mut StdRng::seed_from_u64(seed))?;
        values(&div)
    };
    assert_eq!(draw(1)?, draw(1)?);
    assert_ne!(draw(1)?, draw(2)?);
    Ok(())
}

fn all_params(varmap: &VarMap) -> Result<Vec<(String, Vec<f64>)>> {
    let data = varmap.data().lock().expect("test holds the only lock");
    let mut params: Vec<(String, Vec<f64>)> = data
        .iter()
        .map(|(name, var)| Ok((name.clone(), values(var.as_tensor())?)))
        .collect::<Result<_>>()?;
    params.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(params)
}

#[test]
fn initialisation_is_pytorch_uniform_and_seeded() -> Result<()> {
    let widths = [2, 64, 64, 1];
    let (net, varmap) = mlp(&widths, Activation::Identity, DType::F32, 70)?;
    let params = all_params(&varmap)?;
    assert_eq!(params.len(), 1, "one flat variable per network");
    assert_eq!(params[0].0, "net.params");
    let flat = &params[0].1;
    assert_eq!(flat.len(), Mlp::n_params_of(&widths));
    let mut off = 0;
    for (i, pair) in widths.windows(2).enumerate() {
        let bound = 1.0 / (pair[0] as f64).sqrt();
        for (what, len) in [("weight", pair[0] * pair[1]), ("bias", pair[1])] {
            let vals = &flat[off..off + len];
            off += len;
            // The flat layout's views are the layers' weights and biases.
            let view = if what == "weight" {
                net.weight(i)
            } else {
                net.bias(i)
            };
            assert_eq!(values(view.expect("layer exists"))?, vals);
            // f32 rounding of a draw just below the bound can land on it: allow equality.
            assert!(vals.iter().all(|v| v.abs() <= bound), "layer {i} {what}");
            // Spread over the interval, not clustered: in vectors of 64 or more entries the
            // extremes lie in the outer 20 % (for 64 uniform draws the chance of not doing so is 0.9⁶⁴ ≈ 1e-3 per side; the
            // seed is fixed, so this is deterministic).
            let (lo, hi) = vals
                .iter()
                .fold((f64::MAX, f64::MIN), |(l, h), &v| (l.min(v), h.max(v)));
            assert!(
                vals.len() < 64 || (lo < -0.8 * bound && hi > 0.8 * bound),
                "layer {i} {what}: [{lo}, {hi}]"
            );
        }
    }
    assert_eq!(net.weight(0).map(|w| w.dims().to_vec()), Some(vec![64, 2]));
    assert!(net.weight(3).is_none());

    let (_, same) = mlp(&widths, Activation::Identity, DType::F32, 70)?;
    let (_, other) = mlp(&widths, Activation::Identity, DType::F32, 71)?;
    assert_eq!(
        all_params(&same)?,
        params,
        "same seed, bit-identical weights"
    );
    for ((_, a), (_, b)) in all_params(&other)?.iter().zip(&params) {
        assert_ne!(a, b, "different seed, different weights");
    }
    // f32 and f64 networks from one seed are the same draws, rounded.
    let (_, wide) = mlp(&widths, Activation::Identity, DType::F64, 70)?;
    for ((_, a), (_, b)) in all_params(&wide)?.iter().zip(&params) {
        assert!(a.iter().zip(b).all(|(x, y)| (*x as f32) as f64 == *y));
    }
    Ok(())
}

#[test]
fn an_optimiser_trains_the_registered_weights() -> Result<()> {
    let (net, varmap) = mlp(&[2, 16, 16, 1], Activation::Softplus, DType::F32, 80)?;
    let xs = normal(32, 2, 1.0, DType::F32, &mut StdRng::seed_from_u64(8))?;
    let before = values(&net.forward(&xs)?)?;
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: 1e-2,
            ..Default::default()
        },
    )?;
    // Push ∂σ/∂t towards zero: a loss made of a forward-mode derivative.
    let objective = |net: &Mlp| -> Result<f32> {
        let (_, tangents) = net.forward_with_tangents(&xs, &[1])?;
        Ok(tangents[0].sqr()?.mean_all()?.to_scalar::<f32>()?)
    };
    let start = objective(&net)?;
    for _ in 0..20 {
        let (_, tangents) = net.forward_with_tangents(&xs, &[1])?;
        opt.backward_step(&tangents[0].sqr()?.mean_all()?)?;
    }
    assert!(
        objective(&net)? < 0.5 * start,
        "{start} → {}",
        objective(&net)?
    );
    // The network reads the updated variables, and reloading them gives the same outputs.
    let after = values(&net.forward(&xs)?)?;
    assert_ne!(before, after);
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let config = MlpConfig::new(vec![2, 16, 16, 1], Activation::Softplus);
    let reloaded = Mlp::from_var_builder(&config, vb.pp("net"))?;
    assert_eq!(values(&reloaded.forward(&xs)?)?, after);
    Ok(())
}

#[test]
fn softplus_is_accurate_and_differentiable() -> Result<()> {
    let zs: [f64; 7] = [-60.0, -20.0, -1.0, 0.0, 0.5, 20.0, 60.0];
    for dtype in [DType::F32, DType::F64] {
        let z = Var::from_tensor(&Tensor::new(&zs, &Device::Cpu)?.to_dtype(dtype)?)?;
        let y = softplus(z.as_tensor())?;
        let grads = y.sum_all()?.backward()?;
        let (ys, gs) = (
            values(&y)?,
            values(grads.get(z.as_tensor()).expect("z is a variable"))?,
        );
        for ((&z, y), g) in zs.iter().zip(ys).zip(gs) {
            let exact = if z > 0.0 {
                z + (-z).exp().ln_1p()
            } else {
                z.exp().ln_1p()
            };
            let sigmoid = 1.0 / (1.0 + (-z).exp());
            // Relative accuracy to a few ulps even where softplus(z) ≈ eᶻ is tiny.
            let eps = if dtype == DType::F64 { 1e-15 } else { 1e-6 };
            assert!(
                (y - exact).abs() <= 4.0 * eps * exact,
                "{dtype:?} softplus({z}) = {y}"
            );
            assert!(
                (g - sigmoid).abs() <= 4.0 * eps * sigmoid,
                "{dtype:?} softplus'({z}) = {g}"
            );
        }
    }
    Ok(())
}

fn assert_invalid<T: std::fmt::Debug>(result: Result<T>, name: &str, value_part: &str) {
    match result {
        Err(Error::InvalidParameter { name: n, value, .. }) => {
            assert_eq!(n, name);
            assert!(value.contains(value_part), "{value:?} lacks {value_part:?}");
        }
        other => panic!("expected invalid {name}, got {other:?}"),
    }
}

#[test]
fn invalid_configurations_and_inputs_are_errors() -> Result<()> {
    let varmap = VarMap::new();
    let mut rng = StdRng::seed_from_u64(9);
    let build = |widths: Vec<usize>, rng: &mut StdRng| {
        let config = MlpConfig::new(widths, Activation::Identity);
        Mlp::new(&config, &varmap, "bad", DType::F32, &Device::Cpu, rng)
    };
    assert_invalid(build(vec![], &mut rng), "widths", "[]");
    assert_invalid(build(vec![3], &mut rng), "widths", "[3]");
    assert_invalid(build(vec![2, 0, 1], &mut rng), "widths", "[2, 0, 1]");
    let message = build(vec![2, 0, 1], &mut rng)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        "invalid widths: [2, 0, 1] (every width must be at least 1)"
    );
    let config = MlpConfig::reference(Activation::Identity);
    assert_invalid(
        Mlp::new(&config, &varmap, "half", DType::F16, &Device::Cpu, &mut rng),
        "dtype",
        "F16",
    );
    assert!(
        varmap.all_vars().is_empty(),
        "failed builds register nothing"
    );

    let net = Mlp::new(&config, &varmap, "net", DType::F32, &Device::Cpu, &mut rng)?;
    assert_invalid(
        Mlp::new(&config, &varmap, "net", DType::F32, &Device::Cpu, &mut rng),
        "prefix",
        "net",
    );
    let xs3 = Tensor::zeros((5, 3), DType::F32, &Device::Cpu)?;
    assert_invalid(net.forward(&xs3), "xs", "[5, 3]");
    assert_invalid(net.forward_with_tangents(&xs3, &[0]), "xs", "[5, 3]");
    let xs64 = Tensor::zeros((5, 2), DType::F64, &Device::Cpu)?;
    assert_invalid(net.forward(&xs64), "xs", "F64");
    let xs = Tensor::zeros((5, 2), DType::F32, &Device::Cpu)?;
    assert_invalid(net.forward(&xs.flatten_all()?), "xs", "[10]");
    assert_invalid(net.forward_with_tangents(&xs, &[0, 2]), "dirs", "2");
    let short = Tensor::zeros((4, 2), DType::F32, &Device::Cpu)?;
    assert_invalid(
        net.forward_jvp(&xs, &[xs.clone(), short]),
        "tangents",
        "[4, 2]",
    );
    assert_invalid(
        net.forward_jvp(&xs, std::slice::from_ref(&xs3)),
        "tangents",
        "[5, 3]",
    );

    // Divergences need a field [x, t] ↦ v with v shaped like x.
    let x1 = Tensor::zeros((5, 1), DType::F32, &Device::Cpu)?;
    assert!(divergence_exact(&net, &x1, 0.0).is_ok());
    assert_invalid(divergence_exact(&net, &xs, 0.0), "mlp", "[2, 64, 64, 1]");
    let ts = Tensor::zeros((4, 1), DType::F32, &Device::Cpu)?;
    assert_invalid(divergence_exact(&net, &x1, &ts), "t", "[4, 1]");
    assert_invalid(
        with_time(&xs.flatten_all()?, Time::Scalar(0.0)),
        "xs",
        "[10]",
    );

    // Loading from a VarBuilder that lacks the tensors.
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    assert_invalid(
        Mlp::from_var_builder(&config, vb.pp("missing")),
        "var_builder",
        "params",
    );
    let vb64 = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
    assert_invalid(
        Mlp::from_var_builder(&config, vb64.pp("net")),
        "var_builder",
        "F32",
    );
    Ok(())
}

/// Timing of one training-style evaluation on the reference network: `forward_with_tangents`
/// for ∂/∂x (the 1-D divergence) on a batch of 125, a loss, and its backward pass.
/// `cargo test -p sde-variational --release --test mlp -- --ignored --nocapture timing`
#[test]
#[ignore = "timing, not a check"]
fn timing_forward_with_tangents_and_backward() -> Result<()> {
    use std::time::Instant;
    let (net, _vars) = mlp(&[2, 64, 64, 1], Activation::Identity, DType::F32, 90)?;
    let xs = normal(125, 2, 1.0, DType::F32, &mut StdRng::seed_from_u64(10))?;
    // Best of 20 rounds of 100 calls: robust to other processes sharing the machine.
    let time = |label: &str, f: &dyn Fn() -> Result<()>| -> Result<()> {
        for _ in 0..200 {
            f()?;
        }
        let mut best = f64::MAX;
        for _ in 0..20 {
            let start = Instant::now();
            for _ in 0..100 {
                f()?;
            }
            best = best.min(start.elapsed().as_secs_f64() * 1e4);
        }
        println!("{label:<48} {best:8.1} µs");
        Ok(())
    };
    time("forward", &|| {
        net.forward(&xs)?;
        Ok(())
    })?;
    time("forward + backward", &|| {
        net.forward(&xs)?.sum_all()?.backward()?;
        Ok(())
    })?;
    time("forward_with_tangents [0]", &|| {
        net.forward_with_tangents(&xs, &[0])?;
        Ok(())
    })?;
    time("forward_with_tangents [0] + backward", &|| {
        let (ys, dys) = net.forward_with_tangents(&xs, &[0])?;
        (ys.sum_all()? + dys[0].sum_all()?)?.backward()?;
        Ok(())
    })?;
    time("forward_with_tangents [0, 1] + backward", &|| {
        let (ys, dys) = net.forward_with_tangents(&xs, &[0, 1])?;
        (ys.sum_all()? + dys[0].sum_all()? + dys[1].sum_all()?)?.backward()?;
        Ok(())
    })?;
    let x = normal(125, 1, 1.0, DType::F32, &mut StdRng::seed_from_u64(11))?;
    time("divergence_exact (d = 1, scalar t) + backward", &|| {
        let (vs, div) = divergence_exact(&net, &x, 0.5)?;
        (vs.sum_all()? + div.sum_all()?)?.backward()?;
        Ok(())
    })?;
    Ok(())
}
