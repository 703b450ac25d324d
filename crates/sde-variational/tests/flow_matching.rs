//! Flow matching's score ↔ velocity conversions (`docs/MATH.md` §8) against the exact marginal
//! velocity and score of a data set's interpolant mixture (`docs/MATH.md` §5, appendix F), computed
//! by `sde_core::MixturePath`.

mod common;

use candle_core::{Device, Tensor};
use common::{rel_err, values};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sde_core::{LinearGaussianPath, MixturePath, Score, VectorField};
use sde_variational::flow_matching::Interpolant;
use sde_variational::Result;

/// The data set's optimum: `q_t = (1/N) Σ_n N(t yₙ, β_t²)` for the interpolant (β₀, β₁).
fn optimum(ys: &[f64], beta0: f64, beta1: f64) -> MixturePath {
    let paths = ys
        .iter()
        .map(|&y| LinearGaussianPath::new(0.0, beta0, y, beta1))
        .collect::<sde_core::Result<Vec<_>>>()
        .expect("valid paths");
    MixturePath::new(vec![1.0; ys.len()], paths).expect("valid mixture")
}

#[test]
fn score_and_velocity_conversions_invert_each_other_and_match_the_exact_optimum() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(21);
    let ys: Vec<f64> = (0..40).map(|_| rng.random_range(-8.0..8.0)).collect();
    let (b0, b1) = (1.0, 0.05);
    let interpolant = Interpolant::new(b0, b1)?;
    let mix = optimum(&ys, b0, b1);
    let xs: Vec<f64> = (0..=60).map(|i| -9.0 + 0.3 * i as f64).collect();
    let x = Tensor::from_slice(&xs, (xs.len(), 1), &Device::Cpu)?;
    for t in [0.1, 0.4, 0.7, 0.9] {
        let v_star = mix.velocity(&xs, t)?;
        let s_star = mix.score(&xs, t)?;
        let v = Tensor::from_slice(&v_star, (xs.len(), 1), &Device::Cpu)?;
        let s = Tensor::from_slice(&s_star, (xs.len(), 1), &Device::Cpu)?;
        // Exact identities in f64: a few ulp of terms of size |x|/β_t² ≲ 1e3 → 1e-9 relative.
        let s_conv = interpolant.score_from_velocity(&x, &v, t)?;
        assert!(
            rel_err(&s_conv, &s)? < 1e-9,
            "score from velocity at t = {t}"
        );
        let v_conv = interpolant.velocity_from_score(&x, &s, t)?;
        assert!(
            rel_err(&v_conv, &v)? < 1e-9,
            "velocity from score at t = {t}"
        );
        let round =
            interpolant.velocity_from_score(&x, &interpolant.score_from_velocity(&x, &v, t)?, t)?;
        assert!(rel_err(&round, &v)? < 1e-9, "round trip at t = {t}");
    }
    // Times where a conversion is undefined are errors, not NaNs.
    let singular = Interpolant::new(1.0, 0.0)?;
    assert!(singular.score_from_velocity(&x, &x, 1.0).is_err());
    assert!(interpolant.velocity_from_score(&x, &x, 0.0).is_err());
    Ok(())
}

mod learned {
    use super::*;
    use candle_core::DType;
    use candle_nn::VarMap;
    use sde_variational::elbo::{diffusion_term, GenerativeSde};
    use sde_variational::flow_matching::{fm_elbo, FmWeighting};
    use sde_variational::{
        Activation, DiffusionAt, FlowMarginal, Mlp, MlpConfig, Time, VariationalProcess,
    };

    fn column(v: Vec<f64>) -> Result<Tensor> {
        Ok(Tensor::from_vec(v.clone(), (v.len(), 1), &Device::Cpu)?)
    }

    /// Rows `(y, t, ε)` with `t` in `[0.05, 0.95]`.
    fn rows(n: usize, seed: u64) -> Result<(Tensor, Tensor, Tensor)> {
        let mut rng = StdRng::seed_from_u64(seed);
        let y = (0..n).map(|_| rng.random_range(-8.0..8.0)).collect();
        let t = (0..n).map(|_| rng.random_range(0.05..0.95)).collect();
        let eps = (0..n)
            .map(|_| rng.sample::<f64, _>(rand_distr::StandardNormal))
            .collect();
        Ok((column(y)?, column(t)?, column(eps)?))
    }

    fn velocity(seed: u64) -> Result<Mlp> {
        Mlp::new(
            &MlpConfig::new(vec![2, 16, 16, 1], Activation::Identity),
            &VarMap::new(),
            "v",
            DType::F64,
            &Device::Cpu,
            &mut StdRng::seed_from_u64(seed),
        )
    }

    /// `f = 2 v − f_q,bwd` with `σ² = 2 β₀ β_t / t`, for which `f_q,bwd = x / t` for every `y`.
    struct YFreeSde<'a> {
        v: &'a Mlp,
        interpolant: &'a Interpolant,
    }

    impl GenerativeSde for YFreeSde<'_> {
        fn drift_and_diffusion(&self, x: &Tensor, t: &Tensor) -> Result<(Tensor, DiffusionAt)> {
            let d = DiffusionAt {
                sigma2: self.interpolant.y_free_sigma2(t)?,
                dsigma2_dx: None,
            };
            let (v, _) =
                sde_variational::engine::value_and_tangents(self.v, x, Time::PerSample(t), &[])?;
            Ok((((v * 2.0)? - (x / t)?)?, d))
        }
    }

    #[test]
    fn the_y_free_diffusion_makes_the_reverse_drift_x_over_t_and_the_elbo_term_2_weighted_l_fm(
    ) -> Result<()> {
        let (y, t, eps) = rows(100, 31)?;
        // The reference interpolant's σ² = 2(1 − t)/t.
        let reference = Interpolant::new(1.0, 0.0)?;
        let hand = (t.affine(-2.0, 2.0)? / &t)?;
        assert!(rel_err(&reference.y_free_sigma2(&t)?, &hand)? < 1e-15);
        let v = velocity(32)?;
        for it in [
            Interpolant::new(1.3, 0.2)?,
            Interpolant::learned(0.7, 0.4, DType::F64, &Device::Cpu)?.0,
        ] {
            let d = DiffusionAt {
                sigma2: it.y_free_sigma2(&t)?,
                dsigma2_dx: None,
            };
            // f_q,bwd = x / t whatever y is.
            let q = it.marginal(&y, Time::PerSample(&t), true)?;
            let x = q.sample(&eps)?;
            let e = rel_err(&q.reverse_drift(&x, &d)?, &(&x / &t)?)?;
            // The y-terms cancel algebraically; what is left is f64 rounding of terms ≲ 10².
            assert!(e < 1e-12, "reverse drift {e:e}");
            // The general SDE-ELBO diffusion term equals fm_elbo's 2 |v − u|² / σ².
            let model = YFreeSde {
                v: &v,
                interpolant: &it,
            };
            let general = diffusion_term(&it, &model, &y, &t, &eps)?;
            let delta = Tensor::new(&[[0.01f64]], &Device::Cpu)?;
            let terms = fm_elbo(&v, &it, &y, &t, &eps, &delta, FmWeighting::YFree)?;
            let e = rel_err(&general, &terms.diffusion)?;
            assert!(e < 1e-10, "diffusion term {e:e}");
        }
        Ok(())
    }

    /// The negative mean FM ELBO as a function of the raw width variables.
    fn loss(it: &Interpolant, v: &Mlp, rows: &(Tensor, Tensor, Tensor)) -> Result<Tensor> {
        let delta = Tensor::new(&[[0.05f64]], &Device::Cpu)?;
        let (y, t, eps) = rows;
        let terms = fm_elbo(v, it, y, t, eps, &delta, FmWeighting::YFree)?;
        Ok(terms.elbo()?.mean_all()?.neg()?)
    }

    #[test]
    fn learned_widths_match_fixed_ones_and_their_gradients_match_finite_differences() -> Result<()>
    {
        let (b0, b1) = (1.3, 0.2);
        let (it, vars) = Interpolant::learned(b0, b1, DType::F64, &Device::Cpu)?;
        let (l0, l1) = it.betas()?;
        assert!(
            // softplus(ln(e^β − 1)) = β up to a few ulp.
            (l0 - b0).abs() < 1e-14 && (l1 - b1).abs() < 1e-14,
            "{l0} {l1}"
        );
        assert!(it.is_learned() && !it.detached()?.is_learned());
        // The marginal (and its time derivatives) of the learned path is the fixed one's.
        let fixed = Interpolant::new(b0, b1)?;
        let r = rows(64, 33)?;
        for t in [Time::PerSample(&r.1), Time::Scalar(0.3)] {
            let (a, b) = (it.marginal(&r.0, t, true)?, fixed.marginal(&r.0, t, true)?);
            for (p, q) in [
                (&a.alpha, &b.alpha),
                (&a.beta, &b.beta),
                (a.dbeta_dt.as_ref().unwrap(), b.dbeta_dt.as_ref().unwrap()),
            ] {
                // The same line through tensors instead of scalars: a few ulp.
                assert!(rel_err(p, q)? < 1e-14);
            }
        }
        // d(−ELBO)/dθ by back-propagation against central differences in θ.
        let v = velocity(34)?;
        let grads = loss(&it, &v, &r)?.backward()?;
        for var in &vars {
            let g = values(grads.get(var).expect("a gradient for each width"))?[0];
            let theta = values(var.as_tensor())?[0];
            let h = 1e-5;
            let at = |x: f64| -> Result<f64> {
                var.set(&Tensor::new(&[[x]], &Device::Cpu)?)?;
                Ok(values(&loss(&it, &v, &r)?)?[0])
            };
            let fd = (at(theta + h)? - at(theta - h)?) / (2.0 * h);
            at(theta)?;
            // Central differences with h = 1e-5 in f64: O(h²) ≈ 1e-10 truncation plus
            // ε/h ≈ 1e-11 cancellation, times the loss's scale (~10²).
            assert!((g - fd).abs() < 1e-6 * (1.0 + fd.abs()), "{g} vs {fd}");
        }
        // Bad widths are refused, naming them.
        let e = Interpolant::learned(1.0, 0.0, DType::F64, &Device::Cpu)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("beta1"), "{e}");
        Ok(())
    }
}
