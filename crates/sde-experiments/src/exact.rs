//! Exact likelihoods and the full bound chain for the trained 1-D models (beyond the paper;
//! `docs/MATH.md` §4): for the SDE, VDM and score-matching models
//! `ELBO_SDE ≤ ELBO_ODE ≤ log p(y)` with `∫R dt` between the first two, per validation point
//! and averaged, each figure with its stated numerical error
//! ([`sde_variational::exact::bound_chain_with_errors`]); for the probability-flow models the
//! flow's likelihood beside the SDE's exact one; for the ODE and flow-matching models the
//! Liouville (Fokker–Planck with no diffusion) density as a cross-check of the CNF likelihood.
//!
//! The grid is chosen from the data ([`grid_for`]); the chain runs on the first
//! [`ExactConfig::n_points`] validation points (the validation set is i.i.d., so these are a
//! random subset) and on a grid of `y` for the figure of the three curves.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use sde_solvers::OdeMethod;
use sde_variational::elbo::GenerativeSde;
use sde_variational::exact::{
    bound_chain, bound_chain_with_errors, flow_marginal, ChainConfig, ChainPoint, ChainSummary,
    Figure,
};
use sde_variational::score_matching::{ScoreFlow, VpScore};
use sde_variational::{NeuralOde, VariationalProcess};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::evaluate::to_host;
use crate::train::column;

/// Settings of the exact evaluation. [`ExactConfig::default`]: 1,000 points, cells of width
/// ≈ 0.04, the [`ChainConfig`] defaults otherwise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExactConfig {
    /// Validation points the chain is evaluated on (the first ones); at least 1.
    pub n_points: usize,
    /// The target cell width of the Fokker–Planck grid (positive).
    pub dx: f64,
    /// Points of the `y` grid for the figure of the three curves (0: none).
    pub n_curve: usize,
    /// Times, quadrature nodes (the grid's range and cells are set by [`grid_for`]).
    pub chain: ChainConfig,
    /// RK4 steps of the probability-flow and CNF likelihoods.
    pub ode_steps: usize,
}

impl Default for ExactConfig {
    fn default() -> Self {
        Self {
            n_points: 1000,
            dx: 0.04,
            n_curve: 121,
            chain: ChainConfig::default(),
            ode_steps: 99,
        }
    }
}

impl ExactConfig {
    fn check(&self) -> Result<()> {
        crate::error::check_counts(&[("n_points", self.n_points), ("ode_steps", self.ode_steps)])?;
        if !(self.dx.is_finite() && self.dx > 0.0) {
            return Err(Error::invalid("dx", self.dx, "must be finite and positive"));
        }
        Ok(())
    }
}

/// The Fokker–Planck grid for `data`: `[min(−8, y_min − 5), max(8, y_max + 5)]` (the prior
/// `N(0, 1)` and the data, with five units for the likelihood width and the tails), cells of
/// width about `config.dx` (at most 4,000).
///
/// # Errors
/// Empty or non-finite data, or an invalid `config`.
pub fn grid_for(data: &[f64], config: &ExactConfig) -> Result<ChainConfig> {
    config.check()?;
    if data.is_empty() {
        return Err(Error::invalid("data", 0, "need at least one point"));
    }
    if let Some(v) = data.iter().find(|v| !v.is_finite()) {
        return Err(Error::invalid("data", v, "must be finite"));
    }
    let lo = data.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = data.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let range = ((lo - 5.0).min(-8.0), (hi + 5.0).max(8.0));
    let n_cells = (((range.1 - range.0) / config.dx).ceil() as usize).clamp(50, 4000);
    Ok(ChainConfig {
        x_range: range,
        n_cells,
        ..config.chain
    })
}

/// A summary figure for the report: value and stated error.
pub type ExactFigure = Figure;

/// The exact evaluation of a generative SDE model, as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ExactReport {
    /// Validation points evaluated.
    pub n_points: usize,
    /// Mean `log p(y) = log ∫ N(y; x, δ²) p_1(x) dx`.
    pub log_likelihood: ExactFigure,
    /// Mean `ELBO_ODE = E_{q_1}[log p(y|x_1)] − KL(q_1 ‖ p_1)`.
    pub elbo_ode: ExactFigure,
    /// Mean `∫₀¹ R(t) dt = ELBO_ODE − ELBO_SDE`, the reverse discrepancy the SDE ELBO drops.
    pub reverse_discrepancy: ExactFigure,
    /// Mean `ELBO_SDE` by quadrature (deterministic; the Monte-Carlo ELBO estimates it).
    pub elbo_sde: ExactFigure,
    /// Mean `∫₀¹ F(t) dt`.
    pub forward_discrepancy: ExactFigure,
    /// Mean `KL(q_1 ‖ p_1)`.
    pub kl_end: ExactFigure,
    /// Mean `log p_1(y)`: the SDE's density at the data point (Dirac likelihood).
    pub log_density: ExactFigure,
    /// The probability-flow ODE's mean `log p_1(y)` with the learned score (RK4) on the same
    /// points, where the model has one (VDM, score matching); it equals `log_density` only
    /// if the learned score is the model's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pf_ode_log_density: Option<f64>,
    /// Mean and largest `|ELBO_ODE − ELBO_SDE − ∫R|` over points: the identity's residual.
    pub mean_abs_residual: f64,
    /// The largest residual.
    pub max_abs_residual: f64,
    /// Fraction of points where `ELBO_SDE ≤ ELBO_ODE ≤ log p(y)` holds within the points'
    /// stated errors.
    pub bounds_hold: f64,
    /// The grid: `[x_min, x_max]`, cells, Fokker–Planck steps.
    pub grid: GridReport,
    /// Wall time of the exact evaluation, seconds.
    pub seconds: f64,
}

/// The grid and quadrature behind an [`ExactReport`].
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GridReport {
    /// Left end.
    pub x_min: f64,
    /// Right end.
    pub x_max: f64,
    /// Cells (the error estimate reruns with half as many).
    pub n_cells: usize,
    /// Gauss–Legendre nodes in `t`.
    pub n_time_nodes: usize,
    /// Gauss–Hermite nodes in `ε`.
    pub n_hermite: usize,
    /// Times at which the coefficients were tabulated.
    pub n_table_times: usize,
    /// Steps of the full-resolution Fokker–Planck solve.
    pub fp_steps: usize,
}

/// The exact evaluation and the curves over `y` for the figure.
#[derive(Debug, Clone)]
pub struct ExactOutcome {
    /// The summary.
    pub report: ExactReport,
    /// The chain on the `y` grid (full resolution; no errors).
    pub curve: Vec<ChainPoint>,
    /// The chain per evaluated validation point, and each point's stated errors.
    pub points: Vec<(ChainPoint, ChainPoint)>,
    /// The chain per evaluated point at half resolution (the errors' source).
    pub coarse: Vec<ChainPoint>,
}

fn report_from(
    summary: &ChainSummary,
    points: &[ChainPoint],
    errors: &[ChainPoint],
    chain: &ChainConfig,
    fp_steps: usize,
) -> ExactReport {
    let holds = points
        .iter()
        .zip(errors)
        .filter(|(p, e)| {
            p.elbo_sde <= p.elbo_ode + e.elbo_sde + e.elbo_ode
                && p.elbo_ode <= p.log_likelihood + e.elbo_ode + e.log_likelihood
        })
        .count();
    ExactReport {
        n_points: summary.n_points,
        log_likelihood: summary.log_likelihood,
        elbo_ode: summary.elbo_ode,
        reverse_discrepancy: summary.reverse,
        elbo_sde: summary.elbo_sde,
        forward_discrepancy: summary.forward,
        kl_end: summary.kl_end,
        log_density: summary.log_density,
        pf_ode_log_density: None,
        mean_abs_residual: summary.mean_abs_residual,
        max_abs_residual: summary.max_abs_residual,
        bounds_hold: holds as f64 / points.len().max(1) as f64,
        grid: GridReport {
            x_min: chain.x_range.0,
            x_max: chain.x_range.1,
            n_cells: chain.n_cells,
            n_time_nodes: chain.n_time_nodes,
            n_hermite: chain.n_hermite,
            n_table_times: chain.n_table_times,
            fp_steps,
        },
        seconds: 0.0,
    }
}

/// The `y` grid of the figure: `n` points over the data's range plus 2 on each side.
fn curve_ys(data: &[f64], n: usize) -> Vec<f64> {
    let lo = data.iter().copied().fold(f64::INFINITY, f64::min) - 2.0;
    let hi = data.iter().copied().fold(f64::NEG_INFINITY, f64::max) + 2.0;
    (0..n)
        .map(|i| lo + (hi - lo) * i as f64 / (n.max(2) - 1) as f64)
        .collect()
}

/// The bound chain of a generative SDE `model` with the Gaussian variational `process` and
/// likelihood width `delta` (`(1, 1)`) on `validation` (the first `config.n_points`) and on the
/// figure's `y` grid. Pass detached models; `dtype` and `device` are the models'.
///
/// # Errors
/// Empty or non-finite data, an invalid `config`, errors of the models and the solver.
pub fn sde_chain<P: VariationalProcess, G: GenerativeSde>(
    process: &P,
    model: &G,
    delta: &Tensor,
    validation: &[f64],
    config: &ExactConfig,
    (dtype, device): (DType, &Device),
) -> Result<ExactOutcome> {
    let started = Instant::now();
    let chain = grid_for(validation, config)?;
    let n = config.n_points.min(validation.len());
    let ys = column(&validation[..n], dtype, device)?;
    let result = bound_chain_with_errors(process, model, &ys, delta, &chain)?;
    let curve = if config.n_curve > 0 {
        let grid = column(&curve_ys(validation, config.n_curve), dtype, device)?;
        bound_chain(process, model, &result.marginals, &grid, delta, &chain)?
    } else {
        Vec::new()
    };
    let mut report = report_from(
        &result.summary,
        &result.points,
        &result.errors,
        &chain,
        result.marginals.stats.n_steps,
    );
    report.seconds = started.elapsed().as_secs_f64();
    Ok(ExactOutcome {
        report,
        curve,
        points: result.points.into_iter().zip(result.errors).collect(),
        coarse: result.coarse,
    })
}

/// [`sde_chain`] for a model with a learned VP score (VDM, score matching), plus its
/// probability-flow likelihood on the same points ([`ExactReport::pf_ode_log_density`]).
///
/// # Errors
/// As [`sde_chain`]; errors of the ODE solver.
pub fn vp_chain<M: VpScore + GenerativeSde>(
    model: &M,
    validation: &[f64],
    config: &ExactConfig,
    (dtype, device): (DType, &Device),
) -> Result<ExactOutcome> {
    let started = Instant::now();
    let (_, b1, _) = model
        .vp_schedule()
        .coefficients(sde_variational::Time::Scalar(1.0))?;
    let mut out = sde_chain(
        model.vp_schedule(),
        model,
        &b1,
        validation,
        config,
        (dtype, device),
    )?;
    let n = config.n_points.min(validation.len());
    let ys = column(&validation[..n], dtype, device)?;
    let ll = to_host(&ScoreFlow(model).log_likelihood(&ys, OdeMethod::Rk4, config.ode_steps)?)?;
    out.report.pf_ode_log_density = Some(ll.iter().sum::<f64>() / ll.len() as f64);
    out.report.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}

/// The Liouville cross-check of a continuous normalizing flow.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FlowCheck {
    /// Validation points compared.
    pub n_points: usize,
    /// Mean `log p_1(y)` from the Liouville equation on the grid, with its stated error (the
    /// change on halving the grid).
    pub liouville_log_likelihood: ExactFigure,
    /// Mean CNF log-likelihood (RK4, `ode_steps`), with its stated error (the change on
    /// halving the steps).
    pub cnf_log_likelihood: ExactFigure,
    /// Mean `|Liouville − CNF|` over points.
    pub mean_abs_difference: f64,
    /// The largest `|Liouville − CNF|`.
    pub max_abs_difference: f64,
    /// The grid's cells.
    pub n_cells: usize,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// Compares the CNF likelihood of `flow` (detached) with the density of its Liouville equation
/// on the grid of [`grid_for`], on the first `config.n_points` validation points.
///
/// # Errors
/// Empty or non-finite data, an invalid `config`, errors of the flow and the solvers.
pub fn flow_check(
    flow: &NeuralOde,
    validation: &[f64],
    config: &ExactConfig,
    (dtype, device): (DType, &Device),
) -> Result<FlowCheck> {
    let started = Instant::now();
    let chain = grid_for(validation, config)?;
    let n = config.n_points.min(validation.len());
    let ys_host = &validation[..n];
    let ys = column(ys_host, dtype, device)?;
    let cnf = to_host(&flow.log_likelihood(&ys, OdeMethod::Rk4, config.ode_steps)?)?;
    let cnf_half =
        to_host(&flow.log_likelihood(&ys, OdeMethod::Rk4, config.ode_steps.div_ceil(2))?)?;
    let liouville = |c: &ChainConfig| -> Result<Vec<f64>> {
        let (p1, _) = flow_marginal(flow, flow.prior_scale(), c, dtype, device)?;
        Ok(ys_host.iter().map(|&y| p1.log_density(y)).collect())
    };
    let full = liouville(&chain)?;
    let half = liouville(&chain.halved())?;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let diffs: Vec<f64> = full.iter().zip(&cnf).map(|(a, b)| (a - b).abs()).collect();
    Ok(FlowCheck {
        n_points: n,
        liouville_log_likelihood: Figure {
            value: mean(&full),
            error: (mean(&full) - mean(&half)).abs(),
        },
        cnf_log_likelihood: Figure {
            value: mean(&cnf),
            error: (mean(&cnf) - mean(&cnf_half)).abs(),
        },
        mean_abs_difference: mean(&diffs),
        max_abs_difference: diffs.iter().copied().fold(0.0, f64::max),
        n_cells: chain.n_cells,
        seconds: started.elapsed().as_secs_f64(),
    })
}
