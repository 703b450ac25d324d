//! Evaluation helpers shared by the experiments: sampling a generative SDE, sample-quality
//! distances and densities from samples.

use candle_core::{DType, Device, Tensor};
use sde_core::{Diffusion, Drift};
use sde_solvers::{SdeMethod, TimeGrid};

use sde_variational::elbo::{diffusion_term, GenerativeSde};
use sde_variational::VariationalProcess;

use crate::error::{Error, Result};
use crate::train::TrainRng;

/// The SDE ELBO's drift-matching integrand `F(t) = E_{y, x ~ q_t(·|y)}[(f − f_q)² / 2σ²]` at
/// each time of `ts`, averaged over the rows of `data` `(n, 1)` and `draws` normals per row:
/// where in time the bound spends its nats (`∫₀¹ F dt` is the ELBO's diffusion term). Pass
/// detached models; `ts` must lie in `[0, 1]`.
///
/// # Errors
/// `draws` zero, a time outside `[0, 1]`; errors of the model or the process.
pub fn diffusion_profile<P: VariationalProcess, G: GenerativeSde>(
    process: &P,
    model: &G,
    data: &Tensor,
    ts: &[f64],
    draws: usize,
    rng: &mut TrainRng,
) -> Result<Vec<(f64, f64)>> {
    if draws == 0 {
        return Err(Error::invalid("draws", 0, "must be at least 1"));
    }
    if let Some(&t) = ts.iter().find(|t| !(0.0..=1.0).contains(*t)) {
        return Err(Error::invalid("t", t, "must lie in [0, 1]"));
    }
    let (n, dtype, device) = (data.dim(0)?, data.dtype(), data.device());
    let mut profile = Vec::with_capacity(ts.len());
    for &t in ts {
        let tt = Tensor::full(t, (n, 1), device)?.to_dtype(dtype)?;
        let mut sum = 0.0;
        for _ in 0..draws {
            let eps = sde_core::tensor_standard_normal(rng, &[n, 1], dtype, device)?;
            sum += to_host(&diffusion_term(process, model, data, &tt, &eps)?)?
                .iter()
                .sum::<f64>();
        }
        profile.push((t, sum / (n * draws) as f64));
    }
    Ok(profile)
}

/// Samples of a 1-D generative SDE (pass a detached one): `x_0 ~ N(0, 1)` drawn from `rng`,
/// `n_steps` Euler–Maruyama steps to t = 1. With `record`, every grid state (paths); else the
/// last state only.
pub fn sample_sde<P: Drift<Tensor> + Diffusion<Tensor>>(
    sde: &P,
    n: usize,
    n_steps: usize,
    (dtype, device): (DType, &Device),
    rng: &mut TrainRng,
    record: bool,
) -> Result<Vec<Tensor>> {
    let x0 = sde_core::tensor_standard_normal(rng, &[n, 1], dtype, device)?;
    let grid = TimeGrid::uniform(0.0, 1.0, n_steps)?;
    let sol = SdeMethod::EulerMaruyama.solve(sde, x0, &grid, rng, record)?;
    Ok(sol.states().to_vec())
}

/// The entries of `t` as host `f64`s.
pub fn to_host(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?)
}

/// The mean of a per-point figure `f` (a `(len, 1)` tensor for `(len, 1)` data) over the rows
/// of `data` `(n, 1)`, and its standard error over points, evaluated in chunks of 2,000 rows
/// so that large sets stay in cache and memory.
pub fn mean_se_over_points(
    data: &Tensor,
    mut f: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<(f64, f64)> {
    let n = data.dim(0)?;
    let mut values = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let len = 2000.min(n - start);
        values.extend(to_host(&f(&data.narrow(0, start, len)?)?)?);
        start += len;
    }
    Ok(mean_se(&values))
}

/// The mean of `values` and its standard error `sd / √n` (sample sd; NaN for no values).
pub fn mean_se(values: &[f64]) -> (f64, f64) {
    let nf = values.len() as f64;
    let m = values.iter().sum::<f64>() / nf;
    let var = values.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (nf - 1.0).max(1.0);
    (m, (var / nf).sqrt())
}

/// The last of `states` as host `f64`s (empty if there is none).
pub fn last_to_host(states: &[Tensor]) -> Result<Vec<f64>> {
    states.last().map_or(Ok(Vec::new()), to_host)
}

/// The two-sample Kolmogorov–Smirnov statistic `sup_x |F_a(x) − F_b(x)|` of two samples (NaNs
/// are not expected; they sort last).
pub fn ks_distance(a: &[f64], b: &[f64]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return f64::NAN;
    }
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut d) = (0, 0, 0.0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / na - j as f64 / nb).abs());
    }
    d
}

/// The Wasserstein-1 distance `∫ |F_a − F_b| dx` between two samples' empirical laws.
pub fn wasserstein1(a: &[f64], b: &[f64]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return f64::NAN;
    }
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let mut points: Vec<f64> = a.iter().chain(&b).copied().collect();
    points.sort_by(f64::total_cmp);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut w) = (0, 0, 0.0);
    for pair in points.windows(2) {
        while i < a.len() && a[i] <= pair[0] {
            i += 1;
        }
        while j < b.len() && b[j] <= pair[0] {
            j += 1;
        }
        w += (i as f64 / na - j as f64 / nb).abs() * (pair[1] - pair[0]);
    }
    w
}

/// A Gaussian kernel density estimate of `samples` at `xs` with bandwidth `h` (for figures).
/// Rules of thumb such as Silverman's take the spread of the whole sample and smear a
/// multimodal density (on the five-peak mixture they give `h ≈ 0.8` against peaks of scale
/// 1), so the bandwidth is the caller's choice.
pub fn kde(samples: &[f64], xs: &[f64], h: f64) -> Vec<f64> {
    if samples.is_empty() || !(h.is_finite() && h > 0.0) {
        return vec![f64::NAN; xs.len()];
    }
    let norm = 1.0 / (samples.len() as f64 * h * (2.0 * std::f64::consts::PI).sqrt());
    xs.iter()
        .map(|&x| {
            norm * samples
                .iter()
                .map(|&s| (-0.5 * ((x - s) / h).powi(2)).exp())
                .sum::<f64>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_of_known_samples() {
        // Identical samples: 0. Disjoint: KS 1, W1 the shift.
        let a = [0.0, 1.0, 2.0, 3.0];
        assert_eq!(ks_distance(&a, &a), 0.0);
        let b: Vec<f64> = a.iter().map(|x| x + 10.0).collect();
        assert_eq!(ks_distance(&a, &b), 1.0);
        assert!((wasserstein1(&a, &b) - 10.0).abs() < 1e-12);
        // Half the mass moved: KS 0.5.
        assert_eq!(ks_distance(&[0.0, 1.0], &[0.0, 5.0]), 0.5);
        assert!((wasserstein1(&[0.0, 1.0], &[0.0, 5.0]) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn kde_integrates_to_one() {
        let s: Vec<f64> = (0..200).map(|i| (i as f64 * 0.37).sin() * 3.0).collect();
        let xs: Vec<f64> = (0..2001).map(|i| -10.0 + 0.01 * i as f64).collect();
        let mass: f64 = kde(&s, &xs, 0.3).iter().sum::<f64>() * 0.01;
        // Riemann sum of a smooth density far inside [−10, 10]: error far below 1e-3.
        assert!((mass - 1.0).abs() < 1e-3, "{mass}");
    }
}
