//! Flow matching's score ↔ velocity conversions (`MATH.md` §8) against the exact marginal
//! velocity and score of a data set's interpolant mixture (`MATH.md` §5, appendix F), computed
//! by `sde_core::MixturePath`.

mod common;

use candle_core::{Device, Tensor};
use common::rel_err;
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
