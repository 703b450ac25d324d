//! Itô SDE solvers on fixed grids: Euler–Maruyama and stochastic Heun (`docs/MATH.md` §1).
//!
//! A step takes a standard-normal draw `eps` shaped like the state; the Brownian increment is
//! `ΔW = √|h| eps`. On a decreasing grid (`h < 0`) the same formulas give the backward Itô
//! discretisation of a reverse-time SDE, `x_{t−|h|} = x_t − |h| f_bwd(x_t, t) + g √|h| ε`,
//! with the coefficients evaluated at the right end of each interval.
//!
//! Architecture invariant: solvers never create randomness; they are handed an RNG (or the
//! draws themselves) by the caller.

use rand::Rng;
use sde_core::{Diffusion, Drift, Vector};

use crate::error::Result;
use crate::grid::TimeGrid;
use crate::ode::march;
use crate::solution::Solution;

/// The SDE methods, chosen at run time without dynamic dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SdeMethod {
    /// Euler–Maruyama: strong order ½ (1 for additive noise), weak order 1; converges to the
    /// Itô solution.
    EulerMaruyama,
    /// Stochastic Heun: predictor with the same draw, then the average of both stages' drift
    /// and diffusion. Converges to the *Stratonovich* solution; it agrees with Itô for
    /// additive noise. For multiplicative noise convert the drift first
    /// (`f − ½ g ∂_x g` in 1-D).
    StochasticHeun,
}

impl SdeMethod {
    /// One step of signed size `h` from `(x, t)` with the standard-normal draw `eps`.
    pub fn step<S, P>(self, sde: &P, x: &S, t: f64, h: f64, eps: &S) -> Result<S>
    where
        S: Vector,
        P: Drift<S> + Diffusion<S> + ?Sized,
    {
        let sqrt_h = h.abs().sqrt();
        let f = sde.drift(x, t)?;
        let g = sde.diffusion(x, t)?;
        let drifted = x.add_scaled(h, &f)?;
        match self {
            SdeMethod::EulerMaruyama => Ok(g.add_to(&drifted, sqrt_h, eps)?),
            SdeMethod::StochasticHeun => {
                let predictor = g.add_to(&drifted, sqrt_h, eps)?;
                let f2 = sde.drift(&predictor, t + h)?;
                let g2 = sde.diffusion(&predictor, t + h)?;
                let mean = x.add_scaled(0.5 * h, &f)?.add_scaled(0.5 * h, &f2)?;
                let half = g.add_to(&mean, 0.5 * sqrt_h, eps)?;
                Ok(g2.add_to(&half, 0.5 * sqrt_h, eps)?)
            }
        }
    }

    /// Integrates the SDE over `grid` from `x0`, drawing the noise from `rng`. With `record`
    /// every grid state is kept, else only the last. Errors if `x0` or the final state is not
    /// finite.
    ///
    /// ```
    /// use rand::{rngs::StdRng, SeedableRng};
    /// use sde_core::OrnsteinUhlenbeck;
    /// use sde_solvers::{SdeMethod, TimeGrid};
    /// let ou = OrnsteinUhlenbeck::new(1.0, 0.5).unwrap();
    /// let grid = TimeGrid::uniform(0.0, 1.0, 100).unwrap();
    /// let mut rng = StdRng::seed_from_u64(7);
    /// let xs = vec![1.0f64; 1000];
    /// let sol = SdeMethod::EulerMaruyama.solve(&ou, xs, &grid, &mut rng, false).unwrap();
    /// let mean = sol.last().iter().sum::<f64>() / 1000.0;
    /// assert!((mean - (-1.0f64).exp()).abs() < 0.05);
    /// ```
    pub fn solve<S, P, R>(
        self,
        sde: &P,
        x0: S,
        grid: &TimeGrid,
        rng: &mut R,
        record: bool,
    ) -> Result<Solution<S>>
    where
        S: Vector,
        P: Drift<S> + Diffusion<S> + ?Sized,
        R: Rng + ?Sized,
    {
        march(x0, grid, record, |x, t, h| {
            let eps = x.standard_normal_like(rng)?;
            self.step(sde, x, t, h, &eps)
        })
    }
}
