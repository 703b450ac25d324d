//! The fused SDE ELBO of the paper's SDE model (`sde_variational::network_elbo`) against the
//! generic path (`sde_elbo` with a Gaussian likelihood of width `β₁`): every term per row and
//! the gradient of every variable, in `f64` and `f32`, on one thread and two; gradients against
//! central finite differences; the fallback for networks the engine does not run; bad inputs.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use common::{rel_err, values};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use sde_variational::engine::set_parallel;
use sde_variational::network_elbo::network_gaussian_elbo;
use sde_variational::{
    sde_elbo, Activation, ElboTerms, GaussianLikelihood, Mlp, MlpConfig, NetworkGaussian,
    NeuralSde, Result,
};

/// The model's parts and all its variables, `log β₁` last.
struct Model {
    process: NetworkGaussian,
    sde: NeuralSde,
    vars: Vec<Var>,
}

fn model(widths: &[usize], dtype: DType, seed: u64) -> Result<Model> {
    let varmap = VarMap::new();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut net = |name: &str, out| {
        Mlp::new(
            &MlpConfig::new(widths.to_vec(), out),
            &varmap,
            name,
            dtype,
            &Device::Cpu,
            &mut rng,
        )
    };
    let (a, b) = (
        net("a", Activation::Identity)?,
        net("b", Activation::Softplus)?,
    );
    let (f, s) = (
        net("f", Activation::Identity)?,
        net("s", Activation::Softplus)?,
    );
    let log_beta1 = NetworkGaussian::log_beta1_var(0.3, dtype, &Device::Cpu)?;
    let mut vars: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .expect("an unpoisoned VarMap")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|x, y| x.0.cmp(&y.0));
    let mut vars: Vec<Var> = vars.into_iter().map(|(_, v)| v).collect();
    vars.push(log_beta1.clone());
    Ok(Model {
        process: NetworkGaussian::new(a, b, log_beta1.as_tensor().clone())?,
        sde: NeuralSde::new(f, s)?,
        vars,
    })
}

/// `(y, t, ε)` for `n` rows in `dtype`.
fn rows(n: usize, dtype: DType, seed: u64) -> Result<(Tensor, Tensor, Tensor)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut col = |f: &mut dyn FnMut(&mut StdRng) -> f64| -> Result<Tensor> {
        let v: Vec<f64> = (0..n).map(|_| f(&mut rng)).collect();
        Ok(Tensor::from_vec(v, (n, 1), &Device::Cpu)?.to_dtype(dtype)?)
    };
    Ok((
        col(&mut |r| r.random_range(-3.0..3.0))?,
        col(&mut |r| r.random_range(0.0..1.0))?,
        col(&mut |r| r.sample(StandardNormal))?,
    ))
}

fn generic(m: &Model, y: &Tensor, t: &Tensor, eps: &Tensor) -> Result<ElboTerms> {
    let likelihood = GaussianLikelihood::new(m.process.beta1()?)?;
    sde_elbo(&m.process, &m.sde, y, t, eps, &likelihood)
}

/// The per-row terms of both paths and the gradients of `−mean ELBO` for every variable.
fn compare(m: &Model, n: usize, seed: u64, tol_terms: f64, tol_grads: f64) -> Result<()> {
    let dtype = m.vars[0].dtype();
    let (y, t, eps) = rows(n, dtype, seed)?;
    let fused = network_gaussian_elbo(&m.process, &m.sde, &y, &t, &eps)?;
    let reference = generic(m, &y, &t, &eps)?;
    for (name, a, b) in [
        (
            "reconstruction",
            &fused.reconstruction,
            &reference.reconstruction,
        ),
        ("prior_kl", &fused.prior_kl, &reference.prior_kl),
        ("diffusion", &fused.diffusion, &reference.diffusion),
    ] {
        let err = rel_err(a, b)?;
        assert!(err < tol_terms, "{name}: relative error {err:e} ({n} rows)");
    }
    let loss = |terms: &ElboTerms| -> Result<Tensor> { Ok(terms.elbo()?.mean_all()?.neg()?) };
    let (gf, gr) = (loss(&fused)?.backward()?, loss(&reference)?.backward()?);
    for (i, var) in m.vars.iter().enumerate() {
        let (Some(a), Some(b)) = (gf.get(var.as_tensor()), gr.get(var.as_tensor())) else {
            panic!("variable {i} has no gradient");
        };
        let err = rel_err(a, b)?;
        assert!(
            err < tol_grads,
            "variable {i}: gradient error {err:e} ({n} rows)"
        );
    }
    Ok(())
}

#[test]
fn matches_the_generic_path_in_f64() -> Result<()> {
    let m = model(&[2, 16, 16, 1], DType::F64, 1)?;
    for parallel in [false, true] {
        set_parallel(parallel);
        for n in [1, 7, 125] {
            // The same formulas in another order (the fused ops in f64, the generic path as
            // candle ops): rounding only, measured ≤ 7.5e-16 on the terms and ≤ 4.7e-14 on the
            // gradients, which go through more sums of both signs.
            compare(&m, n, 10 + n as u64, 1e-12, 1e-10)?;
        }
    }
    set_parallel(true);
    Ok(())
}

#[test]
fn matches_the_generic_path_in_f32_at_the_reference_widths() -> Result<()> {
    // The fused element-wise ops compute in f64, the generic path in f32: they agree to f32's
    // rounding of some dozen operations (measured ≤ 2.7e-7 on the terms, ≤ 1.7e-5 on the
    // gradients, whose sums over 125 rows cancel).
    let m = model(&[2, 64, 64, 1], DType::F32, 2)?;
    compare(&m, 125, 3, 1e-5, 1e-4)
}

#[test]
fn gradients_match_finite_differences() -> Result<()> {
    let m = model(&[2, 8, 8, 1], DType::F64, 4)?;
    let (y, t, eps) = rows(9, DType::F64, 5)?;
    let loss = || -> Result<f64> {
        let terms = network_gaussian_elbo(&m.process, &m.sde, &y, &t, &eps)?;
        Ok(terms.elbo()?.mean_all()?.neg()?.to_scalar::<f64>()?)
    };
    let terms = network_gaussian_elbo(&m.process, &m.sde, &y, &t, &eps)?;
    let grads = terms.elbo()?.mean_all()?.neg()?.backward()?;
    // Central differences with h = 1e-6 in f64: truncation ~h² and rounding ~1e-16/h, about
    // 1e-10 here (measured ≤ 1.2e-9 relative); a wrong derivative term would be off by far
    // more than the asserted 1e-6.
    let h = 1e-6;
    for (i, var) in m.vars.iter().enumerate() {
        let analytic = values(grads.get(var.as_tensor()).expect("a gradient"))?;
        let base = values(var.as_tensor())?;
        // A few entries of each variable: the first, the middle, the last.
        let picks = [0, base.len() / 2, base.len() - 1];
        for &k in &picks {
            let mut shifted = base.clone();
            let mut at = |v: f64| -> Result<f64> {
                shifted[k] = v;
                var.set(&Tensor::from_slice(&shifted, var.dims(), &Device::Cpu)?)?;
                loss()
            };
            let numeric = (at(base[k] + h)? - at(base[k] - h)?) / (2.0 * h);
            var.set(&Tensor::from_slice(&base, var.dims(), &Device::Cpu)?)?;
            let err = (numeric - analytic[k]).abs();
            assert!(
                err < 1e-6 * (1.0 + analytic[k].abs()),
                "variable {i} entry {k}: finite difference {numeric}, gradient {}",
                analytic[k]
            );
        }
    }
    Ok(())
}

#[test]
fn networks_outside_the_engine_take_the_generic_path() -> Result<()> {
    // No hidden layer: the engine does not run these networks.
    let m = model(&[2, 1], DType::F64, 6)?;
    let (y, t, eps) = rows(5, DType::F64, 7)?;
    let fused = network_gaussian_elbo(&m.process, &m.sde, &y, &t, &eps)?;
    let reference = generic(&m, &y, &t, &eps)?;
    assert_eq!(values(&fused.elbo()?)?, values(&reference.elbo()?)?);
    Ok(())
}

#[test]
fn bad_inputs_are_rejected() -> Result<()> {
    let m = model(&[2, 8, 8, 1], DType::F64, 8)?;
    let (y, t, eps) = rows(6, DType::F64, 9)?;
    let short = t.narrow(0, 0, 5)?;
    let f32_eps = eps.to_dtype(DType::F32)?;
    let wide = Tensor::zeros((6, 2), DType::F64, &Device::Cpu)?;
    for (name, y, t, eps) in [
        ("y", &wide, &t, &eps),
        ("t", &y, &short, &eps),
        ("eps", &y, &t, &f32_eps),
    ] {
        match network_gaussian_elbo(&m.process, &m.sde, y, t, eps) {
            Err(e) => assert!(e.to_string().contains(name), "{name}: {e}"),
            Ok(_) => panic!("{name}: accepted"),
        }
    }
    Ok(())
}
