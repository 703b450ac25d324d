//! The exact CNF likelihood against closed forms.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::SeedableRng;
use sde_core::DivergenceField;
use sde_solvers::{cnf, OdeMethod, TimeGrid};
use sde_variational::{Activation, Mlp, MlpConfig, NeuralOde};

const LN_2PI: f64 = 1.837_877_066_409_345_3;

/// v(x, t) = a x + c t: a linear field. From x_0 ~ N(0, 1), x_1 = e^a x_0 + c (e^a − 1 − a)/a²,
/// so p_1 = N(c (e^a − 1 − a)/a², e^{2a}) exactly.
struct Linear {
    a: f64,
    c: f64,
}

impl DivergenceField<Tensor, Tensor> for Linear {
    fn velocity_divergence(&self, x: &Tensor, t: f64) -> sde_core::Result<(Tensor, Tensor)> {
        let v = x.affine(self.a, self.c * t)?;
        let div = x.ones_like()?.affine(self.a, 0.0)?;
        Ok((v, div))
    }
}

#[test]
fn linear_field_log_likelihood_is_the_exact_gaussian() {
    let f = Linear { a: 0.8, c: -1.5 };
    let mean = f.c * (f.a.exp() - 1.0 - f.a) / (f.a * f.a);
    let var = (2.0 * f.a).exp();
    let ys: Vec<f64> = (0..21).map(|i| -4.0 + 0.4 * i as f64).collect();
    let yt = Tensor::from_slice(&ys, (21, 1), &Device::Cpu).unwrap();
    for (method, n, tol) in [
        // Global error ∝ h^order: RK4 with 20 steps ~1e-7, RK2 with 99 steps ~1e-4, Euler
        // with 1,000 steps ~1e-3 (the error constant of these mild fields is below 1).
        (OdeMethod::Rk4, 20, 1e-6),
        (OdeMethod::Midpoint, 99, 5e-4),
        (OdeMethod::Euler, 1000, 5e-3),
    ] {
        let grid = TimeGrid::uniform(1.0, 0.0, n).unwrap();
        let zero = Tensor::zeros((21, 1), DType::F64, &Device::Cpu).unwrap();
        let sol = cnf::integrate(method, &f, yt.clone(), zero, &grid).unwrap();
        let x0: Vec<f64> = sol.x_end.flatten_all().unwrap().to_vec1().unwrap();
        let div: Vec<f64> = sol
            .divergence_integral
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for ((y, x0), d) in ys.iter().zip(&x0).zip(&div) {
            let ll = -0.5 * x0 * x0 - 0.5 * LN_2PI + d;
            let exact = -0.5 * (y - mean).powi(2) / var - 0.5 * (var.ln() + LN_2PI);
            assert!((ll - exact).abs() < tol, "{method:?}: {ll} vs {exact}");
        }
    }
}

fn random_ode(seed: u64, dtype: DType) -> NeuralOde {
    let vars = VarMap::new();
    let mut rng = StdRng::seed_from_u64(seed);
    let mlp = Mlp::new(
        &MlpConfig::new(vec![2, 16, 16, 1], Activation::Identity),
        &vars,
        "v",
        dtype,
        &Device::Cpu,
        &mut rng,
    )
    .unwrap();
    NeuralOde::new(mlp).unwrap()
}

#[test]
fn random_network_density_integrates_to_one() {
    let model = random_ode(3, DType::F64);
    let xs: Vec<f64> = (0..=1200)
        .map(|i| -12.0 + 24.0 * i as f64 / 1200.0)
        .collect();
    let t = Tensor::from_slice(&xs, (xs.len(), 1), &Device::Cpu).unwrap();
    let ll: Vec<f64> = model
        .log_likelihood(&t, OdeMethod::Rk4, 50)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let h = xs[1] - xs[0];
    let mass: f64 = ll.iter().map(|l| l.exp()).sum::<f64>() * h;
    // The trapezoid rule on a smooth density with h = 0.02 errs by ~1e-6, the tails beyond
    // ±12 hold < 1e-20 for a small random net (which moves N(0,1) by O(1)), and RK4 with 50
    // steps is accurate to ~1e-7: 1e-4 leaves ample room.
    assert!((mass - 1.0).abs() < 1e-4, "mass {mass}");
}

#[test]
fn hutchinson_is_exact_in_one_dimension() {
    // With d = 1, εᵀJε = J for ε = ±1: the estimate equals the exact divergence.
    let model = random_ode(4, DType::F64);
    let ys = Tensor::from_slice(&[-1.0, 0.5, 2.0], (3, 1), &Device::Cpu).unwrap();
    let exact = model.log_likelihood(&ys, OdeMethod::Midpoint, 10).unwrap();
    let hutch = model
        .with_hutchinson_probe(3, &mut StdRng::seed_from_u64(0))
        .unwrap()
        .log_likelihood(&ys, OdeMethod::Midpoint, 10)
        .unwrap();
    let d = (exact - hutch)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!(d < 1e-12, "{d}");
}

#[test]
fn bad_input_is_an_error() {
    let model = random_ode(5, DType::F64);
    let ys = Tensor::zeros((4, 1), DType::F64, &Device::Cpu).unwrap();
    let e = model
        .log_likelihood(&ys, OdeMethod::Rk4, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("n_steps: 0"), "{e}");
    let wide = Tensor::zeros((4, 2), DType::F64, &Device::Cpu).unwrap();
    assert!(model.log_likelihood(&wide, OdeMethod::Rk4, 5).is_err());
    let nan = Tensor::new(&[[f64::NAN]], &Device::Cpu).unwrap();
    let e = model
        .log_likelihood(&nan, OdeMethod::Rk4, 5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("non-finite"), "{e}");
}

#[test]
fn a_scaled_prior_is_the_zero_fields_density_and_still_integrates_to_one() {
    let xs: Vec<f64> = (0..=1200)
        .map(|i| -12.0 + 24.0 * i as f64 / 1200.0)
        .collect();
    let t = Tensor::from_slice(&xs, (xs.len(), 1), &Device::Cpu).unwrap();
    let ll = |model: &NeuralOde| -> Vec<f64> {
        model
            .log_likelihood(&t, OdeMethod::Rk4, 50)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    for s in [0.6, 2.0] {
        let model = random_ode(5, DType::F64).with_prior_scale(s).unwrap();
        let h = xs[1] - xs[0];
        let mass: f64 = ll(&model).iter().map(|l| l.exp()).sum::<f64>() * h;
        assert!((mass - 1.0).abs() < 1e-4, "s = {s}: mass {mass}");
        // A network with zero weights has v = 0: the density is the prior N(0, s²).
        let mlp = model.mlp();
        let zeros = Mlp::from_flat(mlp.config(), mlp.params().zeros_like().unwrap()).unwrap();
        let zero = NeuralOde::new(zeros).unwrap().with_prior_scale(s).unwrap();
        for (x, l) in xs.iter().zip(ll(&zero)) {
            let exact = -0.5 * (x / s).powi(2) - 0.5 * (2.0 * std::f64::consts::PI).ln() - s.ln();
            // v ≡ 0: the integration adds exact zeros, leaving the prior's formula (rounding).
            assert!((l - exact).abs() < 1e-12, "x = {x}: {l} vs {exact}");
        }
    }
    assert!(random_ode(5, DType::F64).with_prior_scale(0.0).is_err());
}

#[test]
fn a_nan_in_the_data_names_its_row() {
    let model = random_ode(6, DType::F64);
    let ys = Tensor::from_vec(vec![0.0, 1.0, 2.0, f64::NAN, 4.0], (5, 1), &Device::Cpu).unwrap();
    let e = model
        .log_likelihood(&ys, OdeMethod::Rk4, 10)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ys") && e.contains("row 3"), "{e}");
}
