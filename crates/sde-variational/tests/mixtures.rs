//! Tests of mixtures of variational flows (`sde_variational::mixture`): a mixture's forward and
//! reverse-time SDE drifts keep its marginals (by the 1-D Fokker–Planck solver and by
//! sampling); the data-set mixture equals the closed-form mixture path and is the exact optimum
//! of flow and score matching on its data.

mod common;

use candle_core::{Device, Tensor};
use common::{column, filled, moments_of, normals, values};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sde_core::fokker_planck::FokkerPlanck1d;
use sde_core::{
    Diffusion, Drift, GaussianMixture, LinearGaussianPath, MixturePath, Noise, PointwiseField,
    Score,
};
use sde_solvers::{SdeMethod, TimeGrid};
use sde_variational::flow_matching::Interpolant;
use sde_variational::mixture::{DataMixture, Mixture, MixtureAt};
use sde_variational::{DiffusionAt, FlowMarginal, GaussianMarginal, Result, Time};
use sde_variational::{Error, VariationalProcess};

/// Three Gaussian components on straight lines, `α_k = a_k + b_k t`, `β_k = c_k + d_k t`, with
/// weights `softmax(0.3, −0.5, 0.1)`, under the constant diffusion `σ² = 0.6`.
struct ThreeLines;

const LINES: [(f64, f64, f64, f64); 3] = [
    (-2.0, 0.5, 0.5, 0.3),
    (0.5, -1.0, 0.8, -0.4),
    (2.0, 1.5, 0.3, 0.2),
];
const LOGITS: [f64; 3] = [0.3, -0.5, 0.1];
const SIGMA2: f64 = 0.6;

impl ThreeLines {
    fn mixture(&self, rows: usize, t: f64) -> Result<Mixture<GaussianMarginal>> {
        let comps = LINES
            .iter()
            .map(|&(a, b, c, d)| -> Result<GaussianMarginal> {
                Ok(GaussianMarginal {
                    alpha: filled(a + b * t, rows)?,
                    beta: filled(c + d * t, rows)?,
                    dalpha_dt: Some(filled(b, rows)?),
                    dbeta_dt: Some(filled(d, rows)?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Mixture::new(comps, &Tensor::from_slice(&LOGITS, (1, 3), &Device::Cpu)?)
    }

    fn at(&self, x: &Tensor, t: f64) -> Result<MixtureAt> {
        self.mixture(x.dim(0)?, t)?.at(x)
    }

    fn exact(&self, t: f64) -> GaussianMixture {
        let z: f64 = LOGITS.iter().map(|l| l.exp()).sum();
        let comps = LINES
            .iter()
            .map(|&(a, b, c, d)| sde_core::Gaussian::new(a + b * t, (c + d * t).powi(2)))
            .collect::<sde_core::Result<Vec<_>>>()
            .expect("valid components");
        GaussianMixture::new(LOGITS.iter().map(|l| l.exp() / z).collect(), comps)
            .expect("valid mixture")
    }

    fn diffusion_at(x: &Tensor) -> Result<DiffusionAt> {
        Ok(DiffusionAt {
            sigma2: filled(SIGMA2, x.dim(0)?)?,
            dsigma2_dx: None,
        })
    }
}

fn err(e: Error) -> sde_core::Error {
    sde_core::Error::Field(Box::new(e))
}

/// The forward SDE `dx = f_q dt + σ dW`, on tensors (for sampling) and on `Vec<f64>` (for the
/// Fokker–Planck solver).
struct Forward;
/// The reverse-time SDE, drift `f_q,bwd`, for a decreasing grid.
struct Reverse;

impl Drift<Tensor> for Forward {
    fn drift(&self, x: &Tensor, t: f64) -> sde_core::Result<Tensor> {
        let run = || {
            ThreeLines
                .at(x, t)?
                .forward_drift(&ThreeLines::diffusion_at(x)?)
        };
        run().map_err(err)
    }
}

impl Drift<Tensor> for Reverse {
    fn drift(&self, x: &Tensor, t: f64) -> sde_core::Result<Tensor> {
        let run = || {
            ThreeLines
                .at(x, t)?
                .reverse_drift(&ThreeLines::diffusion_at(x)?)
        };
        run().map_err(err)
    }
}

impl Drift<Vec<f64>> for Forward {
    fn drift(&self, x: &Vec<f64>, t: f64) -> sde_core::Result<Vec<f64>> {
        let xs = column(x).map_err(err)?;
        let f = Drift::<Tensor>::drift(self, &xs, t)?;
        values(&f).map_err(err)
    }
}

macro_rules! constant_noise {
    ($($ty:ty => $s:ty),*) => {$(
        impl Diffusion<$s> for $ty {
            fn diffusion(&self, _: &$s, _: f64) -> sde_core::Result<Noise<$s>> {
                Ok(Noise::Scalar(SIGMA2.sqrt()))
            }
            fn diffusion_divergence(&self, _: &$s, _: f64) -> sde_core::Result<Option<$s>> {
                Ok(None)
            }
        }
    )*};
}
constant_noise!(Forward => Tensor, Reverse => Tensor, Forward => Vec<f64>);

/// The Kolmogorov–Smirnov distance between the samples `xs` and the distribution `cdf`.
fn ks_distance(xs: &[f64], cdf: impl Fn(f64) -> f64) -> f64 {
    let n = xs.len() as f64;
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v.iter()
        .enumerate()
        .map(|(i, &x)| {
            let c = cdf(x);
            (c - i as f64 / n).abs().max((c - (i + 1) as f64 / n).abs())
        })
        .fold(0.0, f64::max)
}

#[test]
fn a_mixtures_sde_drift_keeps_its_marginals_by_fokker_planck() -> Result<()> {
    // 800 cells on [−8, 9]: measured L1 errors 1.5e-4 (t = 0.5) and 1.4e-4 (t = 1), the
    // second-order scheme's on these smooth densities; asserted 2e-3. The components cross and change
    // width, so the responsibilities move mass between them along the way.
    let fp = FokkerPlanck1d::new(-8.0, 9.0, 800)?;
    let p0 = fp.project(|x| ThreeLines.exact(0.0).density(x));
    let ps = fp.solve(&Forward, &p0, 0.0, &[0.5, 1.0])?;
    for (p, t) in ps.iter().zip([0.5, 1.0]) {
        let exact = ThreeLines.exact(t);
        let l1 = fp.l1_distance(p, |x| exact.density(x))?;
        eprintln!("t = {t}: L1 {l1:e}");
        assert!(l1 < 2e-3, "t = {t}: L1 distance {l1}");
    }
    Ok(())
}

#[test]
fn a_mixtures_forward_and_reverse_sdes_keep_its_marginals_by_sampling() -> Result<()> {
    // 4,000 paths, 200 Euler–Maruyama steps each way: KS distance to the exact mixture below
    // 1.63/√n ≈ 0.026 (the 1 % critical value) plus 0.01 for the step bias (measured 0.014
    // forward, 0.012 reverse).
    let n = 4000;
    let mut rng = StdRng::seed_from_u64(7);
    let draw = |t: f64, rng: &mut StdRng| -> Vec<f64> { ThreeLines.exact(t).sample(rng, n) };
    let ks = |xs: &[f64], t: f64| ks_distance(xs, |x| ThreeLines.exact(t).cdf(x));
    let x0 = column(&draw(0.0, &mut rng))?;
    let x1 = SdeMethod::EulerMaruyama
        .solve(
            &Forward,
            x0,
            &TimeGrid::uniform(0.0, 1.0, 200)?,
            &mut rng,
            false,
        )?
        .into_last();
    let d = ks(&values(&x1)?, 1.0);
    eprintln!("forward KS {d}");
    assert!(d < 0.036, "forward: KS {d}");
    let x1 = column(&draw(1.0, &mut rng))?;
    let x0 = SdeMethod::EulerMaruyama
        .solve(
            &Reverse,
            x1,
            &TimeGrid::uniform(1.0, 0.0, 200)?,
            &mut rng,
            false,
        )?
        .into_last();
    let d = ks(&values(&x0)?, 0.0);
    eprintln!("reverse KS {d}");
    assert!(d < 0.036, "reverse: KS {d}");
    Ok(())
}

#[test]
fn responsibilities_velocity_and_score_match_the_closed_form_mixture() -> Result<()> {
    // Tensor f64 algebra against sde-core's independent f64 formulas: rounding only, with the
    // score's division by small component densities allowed more (1e-10 against 1e-12).
    let xs = [-3.0, -1.2, 0.0, 0.4, 1.9, 3.5];
    for t in [0.0, 0.3, 0.8] {
        let m = ThreeLines.at(&column(&xs)?, t)?;
        let exact = ThreeLines.exact(t);
        let r = m.responsibilities.to_vec2::<f64>()?;
        for (i, &x) in xs.iter().enumerate() {
            let (er, _) = exact.responsibilities(x);
            for k in 0..3 {
                assert!((r[i][k] - er[k]).abs() < 1e-12, "r_{k}({x}, {t})");
            }
            assert!((r[i].iter().sum::<f64>() - 1.0).abs() < 1e-14);
            let ld = values(&m.log_density)?[i];
            assert!((ld - exact.log_density(x)).abs() < 1e-12, "log q({x}, {t})");
            let s = values(&m.score)?[i];
            assert!((s - exact.score_at(x)).abs() < 1e-10, "score({x}, {t})");
            // v = Σ r_k v_k with v_k = ȧ_k + (ḃ_k / b_k)(x − a_k).
            let v: f64 = LINES
                .iter()
                .zip(&er)
                .map(|(&(a, b, c, d), rk)| rk * (b + d / (c + d * t) * (x - a - b * t)))
                .sum();
            assert!((values(&m.velocity)?[i] - v).abs() < 1e-12, "v({x}, {t})");
        }
    }
    Ok(())
}

/// Flow matching's interpolant with β₀ = 1, β₁ = 0.3, three data, and their mixture of linear
/// Gaussian paths `N(0, 1) → N(y_n, 0.3²)` in closed form.
fn three_data() -> Result<(Interpolant, [f64; 3], MixturePath)> {
    let ys = [-2.0, 0.5, 3.0];
    let path = MixturePath::new(
        vec![1.0 / 3.0; 3],
        ys.iter()
            .map(|&y| LinearGaussianPath::new(0.0, 1.0, y, 0.3))
            .collect::<sde_core::Result<Vec<_>>>()?,
    )?;
    Ok((Interpolant::new(1.0, 0.3)?, ys, path))
}

#[test]
fn the_data_mixture_is_the_closed_form_mixture_path() -> Result<()> {
    // Flow matching's interpolant with β₀ = 1, β₁ = 0.3 over three data: the mixture of the
    // linear Gaussian paths N(0, 1) → N(y_n, 0.3²), whose velocity and score sde-core gives.
    // Two independent f64 implementations of the same formulas: rounding only (1e-12).
    let (interpolant, ys, path) = three_data()?;
    let mix = DataMixture::new(&interpolant, column(&ys)?)?;
    let xs = [-3.0, -0.5, 0.2, 1.0, 2.7];
    for t in [0.05, 0.5, 0.95] {
        let m = mix.at(&column(&xs)?, t)?;
        for (i, &x) in xs.iter().enumerate() {
            let v = values(&m.velocity)?[i];
            let s = values(&m.score)?[i];
            let ld = values(&m.log_density)?[i];
            assert!((v - path.velocity_at(x, t)).abs() < 1e-12, "v({x}, {t})");
            assert!(
                (s - Score::<f64>::score(&path, &x, t)?).abs() < 1e-12,
                "s({x}, {t})"
            );
            assert!(
                (ld - path.marginal(t).log_density(x)).abs() < 1e-12,
                "log q({x}, {t})"
            );
        }
    }
    Ok(())
}

#[test]
fn the_data_mixtures_velocity_transports_its_marginals_as_a_solver_field() -> Result<()> {
    use sde_solvers::OdeMethod;
    // Samples of the mixture at t = 0.05 moved by RK4 on the data mixture's velocity land on
    // the mixture at t = 0.95: KS distance to the closed form below the 1 % critical value
    // 1.63/√n plus 0.005 for the integration (measured: 0.0125).
    let (interpolant, ys, path) = three_data()?;
    let mix = DataMixture::new(&interpolant, column(&ys)?)?;
    let n = 3000;
    let mut rng = StdRng::seed_from_u64(8);
    let x0 = column(&path.marginal(0.05).sample(&mut rng, n))?;
    let x1 = OdeMethod::Rk4
        .solve(&mix, x0, &TimeGrid::uniform(0.05, 0.95, 60)?, false)?
        .into_last();
    let ks = ks_distance(&values(&x1)?, |x| path.marginal(0.95).cdf(x));
    eprintln!("KS {ks}");
    assert!(ks < 1.63 / (n as f64).sqrt() + 0.005, "KS {ks}");
    Ok(())
}

#[test]
fn the_data_mixture_is_the_exact_optimum_of_flow_and_score_matching() -> Result<()> {
    // The minimiser of E|v(x_t) − u|² over fields v is E[u | x_t]: the residual u − v* is
    // orthogonal to every function of x_t. Checked for g = 1, x, tanh x at three times, by
    // 20,000 draws (|mean| < 4 standard errors), for flow matching's target u = f_q,ode and
    // score matching's target ∇ log q_t(x | y); and the mixture's loss beats the best affine
    // field's by more than 10 standard errors once
    // the data's modes show (t ≥ 0.6).
    let ys = [-2.0, -0.5, 0.5, 3.0];
    let interpolant = Interpolant::new(1.0, 0.2)?;
    let mix = DataMixture::new(&interpolant, column(&ys)?)?;
    let n = 20_000;
    let mut rng = StdRng::seed_from_u64(9);
    for t in [0.2, 0.6, 0.9] {
        let y: Vec<f64> = (0..n).map(|_| ys[rng.random_range(0..ys.len())]).collect();
        let q = interpolant.marginal(&column(&y)?, Time::Scalar(t), true)?;
        let eps = normals(&mut rng, n)?;
        let x = q.sample(&eps)?;
        let at = mix.at(&x, t)?;
        let xv = values(&x)?;
        for (name, target, field) in [
            ("velocity", q.ode_drift_at_eps(&eps)?, &at.velocity),
            ("score", q.score_at_eps(&eps)?, &at.score),
        ] {
            let res: Vec<f64> = values(&(field - &target)?)?;
            for (g_name, g) in [
                ("1", &(|_: f64| 1.0) as &dyn Fn(f64) -> f64),
                ("x", &|x: f64| x),
                ("tanh x", &|x: f64| x.tanh()),
            ] {
                let prods: Vec<f64> = res.iter().zip(&xv).map(|(r, &x)| r * g(x)).collect();
                let (m, v) = moments_of(&column(&prods)?)?;
                let se = (v / n as f64).sqrt();
                assert!(
                    m.abs() < 4.0 * se,
                    "t = {t}, {name}: E[(v* − u) {g_name}] = {m} (se {se})"
                );
            }
            // The best affine field a + b x by least squares on the same draws.
            let tv = values(&target)?;
            let (mx, vx) = moments_of(&x)?;
            let cov = xv.iter().zip(&tv).map(|(x, u)| (x - mx) * u).sum::<f64>() / (n as f64 - 1.0);
            let mu = tv.iter().sum::<f64>() / n as f64;
            let b = cov / vx;
            let affine: Vec<f64> = xv
                .iter()
                .zip(&tv)
                .map(|(x, u)| (mu + b * (x - mx) - u).powi(2))
                .collect();
            let optimal: Vec<f64> = res.iter().map(|r| r * r).collect();
            let diff: Vec<f64> = affine.iter().zip(&optimal).map(|(a, o)| a - o).collect();
            let (md, vd) = moments_of(&column(&diff)?)?;
            // Near the prior (t = 0.2) the mixture is close to a Gaussian and the affine field
            // nearly optimal: there the gap only has to be non-negative within noise.
            let se = (vd / n as f64).sqrt();
            let needed = if t < 0.5 { -3.0 * se } else { 10.0 * se };
            assert!(
                md > needed,
                "t = {t}, {name}: loss gap to the affine fit {md} (se {se})"
            );
        }
    }
    Ok(())
}

#[test]
fn bad_mixtures_are_refused() -> Result<()> {
    let none: Vec<GaussianMarginal> = Vec::new();
    let logits = Tensor::zeros((1, 1), candle_core::DType::F64, &Device::Cpu)?;
    assert!(Mixture::new(none, &logits)
        .unwrap_err()
        .to_string()
        .contains("components"));
    let two = ThreeLines.mixture(4, 0.5)?.components()[..2].to_vec();
    let e = Mixture::new(
        two,
        &Tensor::zeros((1, 3), candle_core::DType::F64, &Device::Cpu)?,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("logits"), "{e}");
    let interpolant = Interpolant::new(1.0, 0.2)?;
    let e = DataMixture::new(&interpolant, column(&[])?)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ys"), "{e}");
    let mix = DataMixture::new(&interpolant, column(&[1.0])?)?;
    let e = mix
        .at(&filled(0.0, 3)?.reshape(3)?, 0.5)
        .unwrap_err()
        .to_string();
    assert!(e.contains('x'), "{e}");
    Ok(())
}
