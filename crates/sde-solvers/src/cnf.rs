//! The augmented (state, log-density) integration of a continuous normalizing flow
//! (`docs/MATH.md` §3, paper eq. 23–24).
//!
//! Along a solution of `dx/dt = v(x, t)`, `d/dt log p_t(x_t) = −∇·v(x_t, t)`. Integrating the
//! pair `(x, a)` with `da/dt = ∇·v` from `t_start` to `t_end` (either direction) gives
//! `I = ∫_{t_start}^{t_end} ∇·v dt` and
//!
//! ```text
//! log p_{t_start}(x_start) = log p_{t_end}(x_end) + I.
//! ```
//!
//! For the exact likelihood of data `y` under an ODE model with prior `p_0`, integrate from
//! `y` at t = 1 down to t = 0: `log p_1(y) = log p_0(x_0) + ∫_1^0 ∇·v dt`.

use sde_core::{DivergenceField, Vector, VectorField};

use crate::error::Result;
use crate::grid::TimeGrid;
use crate::ode::OdeMethod;

/// The augmented field `(x, a) ↦ (v(x, t), ∇·v(x, t))` of a [`DivergenceField`], an ODE on
/// pairs that any [`OdeMethod`] integrates.
#[derive(Debug, Clone, Copy)]
pub struct Augmented<'a, F: ?Sized>(pub &'a F);

impl<S, L, F> VectorField<(S, L)> for Augmented<'_, F>
where
    S: Vector,
    L: Vector,
    F: DivergenceField<S, L> + ?Sized,
{
    fn velocity(&self, xa: &(S, L), t: f64) -> sde_core::Result<(S, L)> {
        self.0.velocity_divergence(&xa.0, t)
    }
}

/// The end of an augmented integration.
#[derive(Debug, Clone)]
pub struct CnfSolution<S, L> {
    /// The state at the end of the grid.
    pub x_end: S,
    /// `I = ∫_{t_start}^{t_end} ∇·v dt` along the path: `log p_start(x_start) =
    /// log p_end(x_end) + I`.
    pub divergence_integral: L,
}

/// Integrates `x_start` and its divergence integral along `grid` with `method`. `zero` is the
/// zero of the per-sample scalar type (`0.0`, or a `(batch, 1)` zero tensor).
///
/// ```
/// use sde_core::DivergenceField;
/// use sde_solvers::{cnf::integrate, OdeMethod, TimeGrid};
/// // v(x) = x doubles the scale each unit of time: N(0,1) at t = 0 becomes N(0, e²) at t = 1.
/// struct Expand;
/// impl DivergenceField<f64, f64> for Expand {
///     fn velocity_divergence(&self, x: &f64, _t: f64) -> sde_core::Result<(f64, f64)> {
///         Ok((*x, 1.0))
///     }
/// }
/// let y = 0.7;
/// let grid = TimeGrid::uniform(1.0, 0.0, 50).unwrap();
/// let sol = integrate(OdeMethod::Rk4, &Expand, y, 0.0, &grid).unwrap();
/// let log_p0 = -0.5 * sol.x_end * sol.x_end - 0.5 * (2.0 * std::f64::consts::PI).ln();
/// let log_p1 = log_p0 + sol.divergence_integral;
/// let exact = -0.5 * y * y / 1f64.exp().powi(2) - 1.0 - 0.5 * (2.0 * std::f64::consts::PI).ln();
/// assert!((log_p1 - exact).abs() < 1e-8);
/// ```
pub fn integrate<S, L, F>(
    method: OdeMethod,
    field: &F,
    x_start: S,
    zero: L,
    grid: &TimeGrid,
) -> Result<CnfSolution<S, L>>
where
    S: Vector,
    L: Vector,
    F: DivergenceField<S, L> + ?Sized,
{
    let (x_end, divergence_integral) = method
        .solve(&Augmented(field), (x_start, zero), grid, false)?
        .into_last();
    Ok(CnfSolution {
        x_end,
        divergence_integral,
    })
}
