//! Explicit Runge–Kutta ODE solvers, kept as data (Butcher tableaus) the way diffsol does:
//! Euler, Heun, RK2 midpoint and classical RK4 are one generic step (`docs/MATH.md` §1).

use sde_core::{Vector, VectorField};

use crate::error::{Error, Result};
use crate::grid::TimeGrid;
use crate::solution::Solution;

/// An explicit Runge–Kutta method: `k_i = v(x + h Σ_j a_ij k_j, t + c_i h)`,
/// `x ← x + h Σ_i b_i k_i`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ButcherTableau {
    /// Strictly lower-triangular stage coefficients, row `i` has `i` entries.
    pub a: &'static [&'static [f64]],
    /// Weights.
    pub b: &'static [f64],
    /// Nodes.
    pub c: &'static [f64],
}

/// Forward Euler, order 1.
pub const EULER: ButcherTableau = ButcherTableau {
    a: &[&[]],
    b: &[1.0],
    c: &[0.0],
};
/// Heun's method (explicit trapezoid), order 2.
pub const HEUN: ButcherTableau = ButcherTableau {
    a: &[&[], &[1.0]],
    b: &[0.5, 0.5],
    c: &[0.0, 1.0],
};
/// The explicit midpoint rule (RK2), order 2 — the reference ODE experiment's solver.
pub const MIDPOINT: ButcherTableau = ButcherTableau {
    a: &[&[], &[0.5]],
    b: &[0.0, 1.0],
    c: &[0.0, 0.5],
};
/// The classical fourth-order Runge–Kutta method.
pub const RK4: ButcherTableau = ButcherTableau {
    a: &[&[], &[0.5], &[0.0, 0.5], &[0.0, 0.0, 1.0]],
    b: &[1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0],
    c: &[0.0, 0.5, 0.5, 1.0],
};

impl ButcherTableau {
    /// One step of size `h` (negative: backwards in time) from `(x, t)`.
    pub fn step<S: Vector, F: VectorField<S> + ?Sized>(
        &self,
        field: &F,
        x: &S,
        t: f64,
        h: f64,
    ) -> Result<S> {
        let mut ks: Vec<S> = Vec::with_capacity(self.b.len());
        for (i, (row, &c)) in self.a.iter().zip(self.c).enumerate() {
            let xi = combine(x, h, row, &ks[..i])?;
            ks.push(field.velocity(&xi, t + c * h)?);
        }
        combine(x, h, self.b, &ks)
    }
}

/// `x + h Σ_j w_j k_j`, skipping zero weights and never cloning `x` unless all are zero.
fn combine<S: Vector>(x: &S, h: f64, w: &[f64], ks: &[S]) -> Result<S> {
    let mut acc: Option<S> = None;
    for (&wj, k) in w.iter().zip(ks) {
        if wj != 0.0 {
            acc = Some(acc.as_ref().unwrap_or(x).add_scaled(h * wj, k)?);
        }
    }
    Ok(acc.unwrap_or_else(|| x.clone()))
}

/// The ODE methods, chosen at run time (CLI, configs) without dynamic dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OdeMethod {
    /// Forward Euler, order 1.
    Euler,
    /// Heun's method, order 2.
    Heun,
    /// Explicit midpoint (RK2), order 2.
    Midpoint,
    /// Classical RK4, order 4.
    Rk4,
}

impl OdeMethod {
    /// The method's Butcher tableau.
    pub fn tableau(self) -> &'static ButcherTableau {
        match self {
            OdeMethod::Euler => &EULER,
            OdeMethod::Heun => &HEUN,
            OdeMethod::Midpoint => &MIDPOINT,
            OdeMethod::Rk4 => &RK4,
        }
    }
    /// The global order of accuracy on smooth problems.
    pub fn order(self) -> u32 {
        match self {
            OdeMethod::Euler => 1,
            OdeMethod::Heun | OdeMethod::Midpoint => 2,
            OdeMethod::Rk4 => 4,
        }
    }
    /// Number of field evaluations per step.
    pub fn stages(self) -> usize {
        self.tableau().b.len()
    }
    /// One step of size `h` from `(x, t)`.
    pub fn step<S: Vector, F: VectorField<S> + ?Sized>(
        self,
        field: &F,
        x: &S,
        t: f64,
        h: f64,
    ) -> Result<S> {
        self.tableau().step(field, x, t, h)
    }

    /// Integrates `dx/dt = v(x, t)` over `grid` from `x0` (forwards or backwards, as the grid
    /// runs). With `record`, every grid state is kept; otherwise only the last.
    ///
    /// Errors if `x0` or the final state is not finite.
    ///
    /// ```
    /// use sde_core::FnField;
    /// use sde_solvers::{OdeMethod, TimeGrid};
    /// // dx/dt = −x from x(0) = 1: x(1) = e^{−1}.
    /// let field = FnField(|x: &f64, _t: f64| Ok(-*x));
    /// let grid = TimeGrid::uniform(0.0, 1.0, 20).unwrap();
    /// let sol = OdeMethod::Rk4.solve(&field, 1.0, &grid, false).unwrap();
    /// assert!((sol.last() - (-1.0f64).exp()).abs() < 1e-7);
    /// ```
    pub fn solve<S: Vector, F: VectorField<S> + ?Sized>(
        self,
        field: &F,
        x0: S,
        grid: &TimeGrid,
        record: bool,
    ) -> Result<Solution<S>> {
        let tab = self.tableau();
        march(x0, grid, record, |x, t, h| tab.step(field, x, t, h))
    }
}

/// Advances `x0` along `grid` with `step(x, t, h)`, keeping every state when `record`, and
/// checks that the start and the end are finite: the loop every solver shares.
pub(crate) fn march<S: Vector>(
    x0: S,
    grid: &TimeGrid,
    record: bool,
    mut step: impl FnMut(&S, f64, f64) -> Result<S>,
) -> Result<Solution<S>> {
    check_state(&x0, grid.start(), "")?;
    // The grid itself already holds n_steps + 1 points, so this reservation is as feasible.
    let mut states = Vec::with_capacity(if record { grid.n_steps() + 1 } else { 1 });
    let mut x = x0;
    for (t, h) in grid.steps() {
        let next = step(&x, t, h)?;
        if record {
            states.push(x);
        }
        x = next;
    }
    check_state(&x, grid.end(), " (is the step too large for the problem?)")?;
    states.push(x);
    Ok(Solution::new(grid, states, record))
}

pub(crate) fn check_state<S: Vector>(x: &S, t: f64, hint: &'static str) -> Result<()> {
    match x.first_non_finite()? {
        None => Ok(()),
        Some(i) => Err(Error::NonFinite {
            t,
            entry: Some(i),
            hint,
        }),
    }
}
