//! The whole bound chain of a 1-D generative SDE, computed (`docs/MATH.md` §4):
//!
//! ```text
//! ELBO_SDE(y) ≤ ELBO_ODE(y) ≤ log p(y)
//! ELBO_SDE = E_{q_1}[log p(y|x_1)] − KL(q_0 ‖ p_0) − ∫₀¹ F(t) dt
//! ELBO_ODE = E_{q_1}[log p(y|x_1)] − KL(q_1 ‖ p_1)      = ELBO_SDE + ∫₀¹ R(t) dt
//! log p(y) = log ∫ N(y; x, δ²) p_1(x) dx
//! ```
//!
//! The model's marginals `p_t` come from the Fokker–Planck equation of the generative SDE,
//! solved on a grid ([`model_marginals`]; the coefficients are tabulated once on a time grid,
//! [`sde_core::grid::TabulatedSde`], so the explicit solver's many steps cost no network
//! evaluations). From `p_t` on the grid: the model's own score `∇log p_t` (differences of
//! `log p_i`), hence the reverse discrepancy
//!
//! ```text
//! R(t) = E_{q_t}[(f_bwd − f_q,bwd)² / 2σ²],   f_bwd − f_q,bwd = (f − f_q) − σ² (∇log p_t − ∇log q_t)
//! ```
//!
//! (the `∂_xσ²` terms of the two reverse drifts cancel). The time integrals use Gauss–Legendre
//! nodes in `t`, the expectations over the Gaussian `q_t = N(α, β²)` Gauss–Hermite nodes in `ε`
//! ([`bound_chain`]), both for `F` (a deterministic `ELBO_SDE`) and `R`. `KL(q_1 ‖ p_1)` and
//! `log p(y)` are Gauss–Hermite expectations of the grid's log-density at `t = 1`.
//!
//! `ELBO_ODE` is computed directly (reconstruction minus `KL(q_1 ‖ p_1)`), not as
//! `ELBO_SDE + ∫R`: the difference of the two is the identity `KL(q_1‖p_1) = KL(q_0‖p_0) + ∫F −
//! ∫R` checked numerically ([`ChainPoint::identity_residual`]), a measure of the whole
//! computation's error beside the grid-halving estimate ([`ChainConfig::halved`]).
//!
//! For an ODE model (a continuous normalizing flow), [`flow_marginal`] solves the Liouville
//! equation (the Fokker–Planck equation with `D = 0`), whose density cross-checks the flow's
//! own likelihood.

use candle_core::{DType, Device, Tensor};
use sde_core::fokker_planck::{FokkerPlanck1d, FokkerPlanckStats};
use sde_core::grid::{GridDensity, TabulatedSde};
use sde_core::quadrature::{gauss_hermite, gauss_legendre, Rule};
use sde_core::{Gaussian, VectorField};

use crate::elbo::GenerativeSde;
use crate::error::{column_rows, Error, Result};
use crate::likelihood::GaussianLikelihood;
use crate::mlp::Time;
use crate::process::{FlowMarginal, VariationalProcess};

/// Resolution of the chain's computation. [`ChainConfig::default`] is sized for the 1-D
/// benchmark (`x ∈ [−16, 16]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChainConfig {
    /// The Fokker–Planck grid's interval; it should hold the data, the likelihood's width
    /// around them and the prior `N(0, 1)`.
    pub x_range: (f64, f64),
    /// Cells of the grid (at least 3). Default 800 (`Δx = 0.04` on `[−16, 16]`).
    pub n_cells: usize,
    /// Times at which the generative coefficients are tabulated on the grid (uniform on
    /// `[0, 1]`, interpolated cubically; at least 2). Default 161.
    pub n_table_times: usize,
    /// Gauss–Legendre nodes in `t` for `∫F` and `∫R` (at most 100). Default 32.
    pub n_time_nodes: usize,
    /// Gauss–Hermite nodes in `ε` for every expectation over a Gaussian (at most 100).
    /// Default 16.
    pub n_hermite: usize,
}

impl Default for ChainConfig {
    fn default() -> Self {
        Self {
            x_range: (-16.0, 16.0),
            n_cells: 800,
            n_table_times: 161,
            n_time_nodes: 32,
            n_hermite: 16,
        }
    }
}

impl ChainConfig {
    /// Checks the ranges documented on the fields.
    pub fn check(&self) -> Result<()> {
        let (a, b) = self.x_range;
        if !(a.is_finite() && b.is_finite() && a < b) {
            return Err(Error::invalid(
                "x_range",
                format!("({a}, {b})"),
                "must be finite with x_min < x_max",
            ));
        }
        for (name, v, lo) in [
            ("n_cells", self.n_cells, 3),
            ("n_table_times", self.n_table_times, 2),
            ("n_time_nodes", self.n_time_nodes, 1),
            ("n_hermite", self.n_hermite, 1),
        ] {
            if v < lo {
                return Err(Error::invalid(name, v, "too small (see ChainConfig)"));
            }
        }
        for (name, v) in [
            ("n_time_nodes", self.n_time_nodes),
            ("n_hermite", self.n_hermite),
        ] {
            if v > sde_core::quadrature::MAX_LEGENDRE_NODES {
                return Err(Error::invalid(name, v, "must be at most 100"));
            }
        }
        Ok(())
    }

    /// The same computation at half the resolution in every direction (cells, table times,
    /// time nodes, Hermite nodes, each halved and at least the minimum): the difference of a
    /// figure between the two is the stated numerical error of the full-resolution one (for a
    /// second-order grid this overestimates the error about threefold).
    pub fn halved(&self) -> Self {
        Self {
            x_range: self.x_range,
            n_cells: (self.n_cells / 2).max(3),
            n_table_times: (self.n_table_times / 2 + 1).max(2),
            n_time_nodes: (self.n_time_nodes / 2).max(1),
            n_hermite: (self.n_hermite / 2).max(1),
        }
    }
}

/// The model's marginals on the grid: `p_t` at the Gauss–Legendre time nodes and at `t = 1`.
#[derive(Debug, Clone)]
pub struct ModelMarginals {
    /// The grid.
    pub grid: FokkerPlanck1d,
    /// The time rule (nodes on `[0, 1]`).
    pub times: Rule,
    /// `p_t` at each node of `times`.
    pub densities: Vec<GridDensity>,
    /// `p_1`.
    pub at_one: GridDensity,
    /// The solver's step counts and smallest density.
    pub stats: FokkerPlanckStats,
}

/// Host values of a `(B, 1)` or `(1, 1)` tensor.
fn host(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?)
}

fn column(v: &[f64], dtype: DType, device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(v, (v.len(), 1), device)?.to_dtype(dtype)?)
}

/// Rows per network batch in the tabulation and the chain.
const CHUNK: usize = 4_096;

/// Evaluates `model`'s drift at `xs` and `σ²` at `centres` for each of `times` (per-row times,
/// in chunks): the tables of [`TabulatedSde`].
fn tabulate<G: GenerativeSde>(
    model: &G,
    grid: &FokkerPlanck1d,
    times: &[f64],
    dtype: DType,
    device: &Device,
) -> Result<TabulatedSde> {
    let eval = |points: &[f64], want_drift: bool| -> Result<Vec<f64>> {
        let rows: Vec<(f64, f64)> = times
            .iter()
            .flat_map(|&t| points.iter().map(move |&x| (x, t)))
            .collect();
        let mut out = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(CHUNK) {
            let xs: Vec<f64> = chunk.iter().map(|r| r.0).collect();
            let ts: Vec<f64> = chunk.iter().map(|r| r.1).collect();
            let x = column(&xs, dtype, device)?;
            let t = column(&ts, dtype, device)?;
            let (f, d) = model.drift_and_diffusion(&x, &t)?;
            let v = if want_drift {
                f
            } else {
                d.sigma2.broadcast_as((chunk.len(), 1))?.contiguous()?
            };
            out.extend(host(&v)?);
        }
        Ok(out)
    };
    let drift = eval(grid.faces(), true)?;
    let d2 = eval(grid.centres(), false)?;
    Ok(TabulatedSde::new(grid, times.to_vec(), drift, d2)?)
}

fn uniform_times(n: usize) -> Vec<f64> {
    (0..n).map(|k| k as f64 / (n - 1) as f64).collect()
}

/// Solves the Fokker–Planck equation of `model` from the prior `N(0, 1)` at `t = 0` on the grid
/// of `config` and returns `p_t` at the Gauss–Legendre time nodes and at `t = 1`. The network is
/// evaluated in `dtype` on `device` (the model's own).
///
/// # Errors
/// An invalid `config`, non-finite coefficients, or errors of the model or the solver.
pub fn model_marginals<G: GenerativeSde>(
    model: &G,
    config: &ChainConfig,
    dtype: DType,
    device: &Device,
) -> Result<ModelMarginals> {
    config.check()?;
    let grid = FokkerPlanck1d::new(config.x_range.0, config.x_range.1, config.n_cells)?;
    let table = tabulate(
        model,
        &grid,
        &uniform_times(config.n_table_times),
        dtype,
        device,
    )?;
    let times = gauss_legendre(config.n_time_nodes, 0.0, 1.0)?;
    let prior = Gaussian::standard();
    let p0 = grid.project(|x| prior.density(x));
    let mut out_times = times.nodes.to_vec();
    out_times.push(1.0);
    let (mut ps, stats) = grid.solve_with_stats(&table, &p0, 0.0, &out_times)?;
    let p1 = ps
        .pop()
        .ok_or_else(|| Error::invalid("times", 0, "no output"))?;
    let densities = ps
        .iter()
        .map(|p| GridDensity::new(&grid, p))
        .collect::<sde_core::Result<Vec<_>>>()?;
    Ok(ModelMarginals {
        at_one: GridDensity::new(&grid, &p1)?,
        grid,
        times,
        densities,
        stats,
    })
}

/// The density at `t = 1` of an ODE model `dx/dt = v(x, t)` started from `N(0, prior_std²)`,
/// by the Liouville equation (Fokker–Planck with no diffusion) on the grid of `config`, the
/// velocity tabulated at `config.n_table_times` times (one batch per time).
///
/// # Errors
/// An invalid `config` or `prior_std`, non-finite velocities, errors of the field or solver.
pub fn flow_marginal<V: VectorField<Tensor>>(
    field: &V,
    prior_std: f64,
    config: &ChainConfig,
    dtype: DType,
    device: &Device,
) -> Result<(GridDensity, FokkerPlanckStats)> {
    config.check()?;
    let prior = Gaussian::new(0.0, prior_std * prior_std)
        .map_err(|_| Error::invalid("prior_std", prior_std, "must be finite and positive"))?;
    let grid = FokkerPlanck1d::new(config.x_range.0, config.x_range.1, config.n_cells)?;
    let times = uniform_times(config.n_table_times);
    let x = column(grid.faces(), dtype, device)?;
    let mut drift = Vec::with_capacity(times.len() * grid.faces().len());
    for &t in &times {
        drift.extend(host(&field.velocity(&x, t)?)?);
    }
    let d2 = vec![0.0; times.len() * grid.n_cells()];
    let table = TabulatedSde::new(&grid, times, drift, d2)?;
    let p0 = grid.project(|x| prior.density(x));
    let (mut ps, stats) = grid.solve_with_stats(&table, &p0, 0.0, &[1.0])?;
    let p1 = ps
        .pop()
        .ok_or_else(|| Error::invalid("times", 0, "no output"))?;
    Ok((GridDensity::new(&grid, &p1)?, stats))
}

/// The chain at one data point (all in nats).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ChainPoint {
    /// The data point.
    pub y: f64,
    /// `log p(y) = log ∫ N(y; x, δ²) p_1(x) dx`.
    pub log_likelihood: f64,
    /// `log p_1(y)`, the model's density at `y` itself (a Dirac likelihood; what a
    /// probability-flow ODE's likelihood estimates).
    pub log_density: f64,
    /// `ELBO_ODE = reconstruction − KL(q_1 ‖ p_1)`.
    pub elbo_ode: f64,
    /// `ELBO_SDE = reconstruction − KL(q_0 ‖ p_0) − ∫F`, by quadrature.
    pub elbo_sde: f64,
    /// `∫₀¹ R(t) dt`.
    pub reverse: f64,
    /// `∫₀¹ F(t) dt`.
    pub forward: f64,
    /// `E_{q_1}[log p(y | x_1)]` (closed form).
    pub reconstruction: f64,
    /// `KL(q_0 ‖ N(0, 1))` (closed form).
    pub prior_kl: f64,
    /// `KL(q_1 ‖ p_1)`.
    pub kl_end: f64,
}

impl ChainPoint {
    /// `ELBO_ODE − (ELBO_SDE + ∫R)`: zero in exact arithmetic (`docs/MATH.md` §4), so a measure
    /// of the numerical error.
    pub fn identity_residual(&self) -> f64 {
        self.elbo_ode - self.elbo_sde - self.reverse
    }
}

/// The chain at every data point of `ys` `(n, 1)`, for the Gaussian variational `process`, the
/// generative `model` whose marginals are `marginals` (from [`model_marginals`] with the same
/// `config`) and the Gaussian likelihood of width `delta` (`(1, 1)`). Pass detached models.
///
/// Cost: `n × n_time_nodes × n_hermite` rows through the process and the model.
///
/// # Errors
/// `ys` not `(n, 1)`, `delta` not a positive `(1, 1)`, errors of the process or the model, or a
/// non-finite result (named with its data point).
pub fn bound_chain<P: VariationalProcess, G: GenerativeSde>(
    process: &P,
    model: &G,
    marginals: &ModelMarginals,
    ys: &Tensor,
    delta: &Tensor,
    config: &ChainConfig,
) -> Result<Vec<ChainPoint>> {
    config.check()?;
    let n = column_rows("ys", ys)?;
    let delta_v = match host(delta)?.as_slice() {
        [d] if d.is_finite() && *d > 0.0 => *d,
        other => {
            return Err(Error::invalid(
                "delta",
                format!("{other:?}"),
                "must be one finite positive width",
            ))
        }
    };
    if marginals.densities.len() != marginals.times.nodes.len()
        || marginals.times.nodes.len() != config.n_time_nodes
    {
        return Err(Error::invalid(
            "marginals",
            marginals.times.nodes.len(),
            "must come from model_marginals with the same config",
        ));
    }
    let (dtype, device) = (ys.dtype(), ys.device().clone());
    let gh = gauss_hermite(config.n_hermite)?;
    let n_h = config.n_hermite;
    let y_host = host(ys)?;
    let p1 = &marginals.at_one;

    // The ends: closed forms for Gaussian marginals, the Hermite rule over ε otherwise.
    let q1 = process.marginal(ys, Time::Scalar(1.0), false)?;
    let q0 = process.marginal(ys, Time::Scalar(0.0), false)?;
    let likelihood = GaussianLikelihood::new(delta.clone())?;
    let recon = host(&q1.expected_log_likelihood(ys, &likelihood, &gh)?)?;
    let prior_kl = host(&FlowMarginal::kl_to_standard_normal(&q0, &gh)?)?;

    // KL(q_1 ‖ p_1) = E_ε[log q_1(φ(ε)) − log p_1(φ(ε))], accumulated per point below.
    let mut kl_end = vec![0.0; n];
    let mut forward = vec![0.0; n];
    let mut reverse = vec![0.0; n];
    let points_per_chunk = (CHUNK / n_h).max(1);
    for start in (0..n).step_by(points_per_chunk) {
        let len = points_per_chunk.min(n - start);
        let y_rep: Vec<f64> = y_host[start..start + len]
            .iter()
            .flat_map(|&y| std::iter::repeat_n(y, n_h))
            .collect();
        let eps_rep: Vec<f64> = (0..len).flat_map(|_| gh.nodes.iter().copied()).collect();
        let y_t = column(&y_rep, dtype, &device)?;
        let eps_t = column(&eps_rep, dtype, &device)?;
        let q1_rows = process.marginal(&y_t, Time::Scalar(1.0), false)?;
        let x1 = host(&q1_rows.sample(&eps_t)?)?;
        let log_q1 = host(&q1_rows.log_density_at_eps(&eps_t)?)?;
        for (r, (&x, &lq)) in x1.iter().zip(&log_q1).enumerate() {
            let (i, j) = (r / n_h, r % n_h);
            kl_end[start + i] += gh.weights[j] * (lq - p1.log_density(x));
        }
        for (k, (&t, &wt)) in marginals
            .times
            .nodes
            .iter()
            .zip(&marginals.times.weights)
            .enumerate()
        {
            let q = process.marginal(&y_t, Time::Scalar(t), true)?;
            let x = q.sample(&eps_t)?;
            let t_col = Tensor::full(t, (y_rep.len(), 1), &device)?.to_dtype(dtype)?;
            let (f, d) = model.drift_and_diffusion(&x, &t_col)?;
            let fq = q.forward_drift_at_eps(&eps_t, &d)?;
            let e = host(&(f - fq)?)?;
            let s2 = host(&d.sigma2.broadcast_as((y_rep.len(), 1))?.contiguous()?)?;
            let xs = host(&x)?;
            let score_q = host(&q.score_at_eps(&eps_t)?)?;
            let density = &marginals.densities[k];
            for (r, ((&e, &s2), (&x, &sq))) in
                e.iter().zip(&s2).zip(xs.iter().zip(&score_q)).enumerate()
            {
                let (i, j) = (r / n_h, r % n_h);
                let w = wt * gh.weights[j];
                // f_bwd − f_q,bwd = (f − f_q) − σ² (∇log p_t − ∇log q_t).
                let g = e - s2 * (density.score(x) - sq);
                forward[start + i] += w * e * e / (2.0 * s2);
                reverse[start + i] += w * g * g / (2.0 * s2);
            }
        }
    }

    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let y = y_host[i];
        let kl_end = kl_end[i];
        let point = ChainPoint {
            y,
            log_likelihood: p1.log_convolved(y, delta_v, &gh),
            log_density: p1.log_density(y),
            elbo_ode: recon[i] - kl_end,
            elbo_sde: recon[i] - prior_kl[i] - forward[i],
            reverse: reverse[i],
            forward: forward[i],
            reconstruction: recon[i],
            prior_kl: prior_kl[i],
            kl_end,
        };
        let values = [
            point.log_likelihood,
            point.elbo_ode,
            point.elbo_sde,
            point.reverse,
        ];
        if values.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: format!("bound chain at data point {i} (y = {y}): {point:?}"),
            });
        }
        out.push(point);
    }
    Ok(out)
}

/// A figure of the chain and its stated numerical error.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Figure {
    /// The value at full resolution.
    pub value: f64,
    /// Its stated numerical error: `|full − halved| + |residual(full)| + |residual(halved)|`
    /// ([`ChainResult`]).
    pub error: f64,
}

/// The chain averaged over the data points, each figure with its stated error.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ChainSummary {
    /// Data points averaged.
    pub n_points: usize,
    /// Mean `log p(y)`.
    pub log_likelihood: Figure,
    /// Mean `log p_1(y)` (Dirac likelihood).
    pub log_density: Figure,
    /// Mean `ELBO_ODE`.
    pub elbo_ode: Figure,
    /// Mean `ELBO_SDE` (quadrature).
    pub elbo_sde: Figure,
    /// Mean `∫R dt`.
    pub reverse: Figure,
    /// Mean `∫F dt`.
    pub forward: Figure,
    /// Mean `KL(q_1 ‖ p_1)`.
    pub kl_end: Figure,
    /// Mean of `|ELBO_ODE − ELBO_SDE − ∫R|` over points, full resolution.
    pub mean_abs_residual: f64,
    /// Its largest value.
    pub max_abs_residual: f64,
}

/// The chain at full and at half resolution ([`ChainConfig::halved`]), per point and averaged.
#[derive(Debug, Clone)]
pub struct ChainResult {
    /// Per point, full resolution.
    pub points: Vec<ChainPoint>,
    /// Per point, each field the stated error of the same field of `points` (`y` is the data
    /// point): the change on halving every resolution plus the identity residuals at both
    /// resolutions. The residual terms make it conservative where grid convergence is not
    /// monotone (tests: it bounds the true error on the linear-Gaussian model).
    pub errors: Vec<ChainPoint>,
    /// Per point, at half resolution.
    pub coarse: Vec<ChainPoint>,
    /// The averages.
    pub summary: ChainSummary,
    /// The model's marginals at full resolution.
    pub marginals: ModelMarginals,
}

fn point_fields(p: &ChainPoint) -> [f64; 9] {
    [
        p.log_likelihood,
        p.log_density,
        p.elbo_ode,
        p.elbo_sde,
        p.reverse,
        p.forward,
        p.reconstruction,
        p.prior_kl,
        p.kl_end,
    ]
}

fn point_from(y: f64, v: [f64; 9]) -> ChainPoint {
    ChainPoint {
        y,
        log_likelihood: v[0],
        log_density: v[1],
        elbo_ode: v[2],
        elbo_sde: v[3],
        reverse: v[4],
        forward: v[5],
        reconstruction: v[6],
        prior_kl: v[7],
        kl_end: v[8],
    }
}

/// [`model_marginals`] and [`bound_chain`] at `config` and at `config.halved()`, with the stated
/// errors and the averages (module docs). Pass detached models; `ys` `(n, 1)` in the models'
/// dtype and device.
///
/// # Errors
/// As [`model_marginals`] and [`bound_chain`]; `ys` empty.
pub fn bound_chain_with_errors<P: VariationalProcess, G: GenerativeSde>(
    process: &P,
    model: &G,
    ys: &Tensor,
    delta: &Tensor,
    config: &ChainConfig,
) -> Result<ChainResult> {
    if ys.elem_count() == 0 {
        return Err(Error::invalid("ys", 0, "need at least one data point"));
    }
    let (dtype, device) = (ys.dtype(), ys.device().clone());
    let marginals = model_marginals(model, config, dtype, &device)?;
    let points = bound_chain(process, model, &marginals, ys, delta, config)?;
    let coarse_config = config.halved();
    let coarse_marginals = model_marginals(model, &coarse_config, dtype, &device)?;
    let coarse = bound_chain(process, model, &coarse_marginals, ys, delta, &coarse_config)?;
    let errors: Vec<ChainPoint> = points
        .iter()
        .zip(&coarse)
        .map(|(p, c)| {
            let slack = p.identity_residual().abs() + c.identity_residual().abs();
            let (fp, fc) = (point_fields(p), point_fields(c));
            let mut e = [0.0; 9];
            for k in 0..9 {
                e[k] = (fp[k] - fc[k]).abs() + slack;
            }
            point_from(p.y, e)
        })
        .collect();
    let nf = points.len() as f64;
    let mean = |ps: &[ChainPoint]| -> [f64; 9] {
        let mut m = [0.0; 9];
        for p in ps {
            for (a, v) in m.iter_mut().zip(point_fields(p)) {
                *a += v / nf;
            }
        }
        m
    };
    let (mf, mc) = (mean(&points), mean(&coarse));
    let mean_abs =
        |ps: &[ChainPoint]| ps.iter().map(|p| p.identity_residual().abs()).sum::<f64>() / nf;
    let slack = mean_abs(&points) + mean_abs(&coarse);
    let fig = |k: usize| Figure {
        value: mf[k],
        error: (mf[k] - mc[k]).abs() + slack,
    };
    let summary = ChainSummary {
        n_points: points.len(),
        log_likelihood: fig(0),
        log_density: fig(1),
        elbo_ode: fig(2),
        elbo_sde: fig(3),
        reverse: fig(4),
        forward: fig(5),
        kl_end: fig(8),
        mean_abs_residual: mean_abs(&points),
        max_abs_residual: points
            .iter()
            .map(|p| p.identity_residual().abs())
            .fold(0.0, f64::max),
    };
    Ok(ChainResult {
        points,
        errors,
        coarse,
        summary,
        marginals,
    })
}
