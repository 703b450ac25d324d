//! # sde-solvers
//!
//! Fixed-grid solvers for ODEs and Itô SDEs, the second layer of the workspace (it builds on
//! `sde-core` only). One implementation serves every state type of
//! [`sde_core::Vector`]: closed-form `f64` processes for tests against exact answers,
//! `Vec`s of paths, and batched candle tensors for neural drifts.
//!
//! - ODE ([`OdeMethod`], Butcher tableaus in [`ode`]): Euler, Heun, RK2 midpoint, RK4.
//! - SDE ([`SdeMethod`]): Euler–Maruyama and stochastic Heun.
//! - Forward and reverse time: a [`TimeGrid`] may run either way (`docs/MATH.md` §1).
//! - [`pointwise`]: the in-place slice fast path for one-dimensional laws on many paths.
//! - [`cnf`]: the augmented (state, log-density) integration of continuous normalizing flows.
//!
//! Architecture invariant: solvers never create randomness; the caller hands them a seeded
//! RNG (or the draws themselves).
//!
//! ```
//! use rand::{rngs::StdRng, SeedableRng};
//! use sde_core::{GaussianMarginals, OrnsteinUhlenbeck, ReverseTimeSde};
//! use sde_solvers::{SdeMethod, TimeGrid};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Run an OU process backwards in time from its t = 1 marginal with the exact score.
//! let ou = OrnsteinUhlenbeck::new(1.0, 1.0)?;
//! let marginals = GaussianMarginals::new(ou, 2.0, 0.1)?;
//! let reverse = ReverseTimeSde::new(ou, marginals);
//! let p1 = marginals.at(1.0)?;
//! let mut rng = StdRng::seed_from_u64(0);
//! let x1 = p1.sample(&mut rng, 4000);
//! let grid = TimeGrid::uniform(1.0, 0.0, 200)?;
//! let x0 = SdeMethod::EulerMaruyama.solve(&reverse, x1, &grid, &mut rng, false)?.into_last();
//! let mean = x0.iter().sum::<f64>() / x0.len() as f64;
//! assert!((mean - 2.0).abs() < 0.05);
//! # Ok(()) }
//! ```

pub mod cnf;
pub mod error;
pub mod grid;
pub mod ode;
pub mod pointwise;
pub mod sde;
mod solution;

pub use error::{Error, Result};
pub use grid::TimeGrid;
pub use ode::{ButcherTableau, OdeMethod};
pub use sde::SdeMethod;
pub use solution::Solution;
