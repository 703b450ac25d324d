//! # sde-benches
//!
//! Shared setup for the Criterion benchmarks in `benches/solvers.rs` (run them with
//! `cargo bench -p sde-benches`, or `cargo xtask bench` for a summary against the reference
//! timings in `docs/REFERENCE-TIMINGS.md`). This package sits beside the layers, on top of
//! `sde-core` and `sde-solvers`, and nothing depends on it.
//!
//! What is measured, all single-threaded, throughput in elements (paths × steps) per second:
//!
//! - `normals/{f32,f64}`: the bare standard-normal generator
//!   ([`NormalFill`](sde_core::noise::NormalFill)) on a reused buffer of [`NORMAL_BUFFER`]
//!   entries. One Euler–Maruyama path-step needs one normal, so this is the limit an
//!   Euler–Maruyama step cannot beat.
//! - `em_slice/{f32,f64}`: Euler–Maruyama on [`ou`] through the in-place slice fast path
//!   (`sde_solvers::pointwise::euler_maruyama_in_place`).
//! - `em_tensor/{f32,f64}`: the same through the generic solver on a `(paths, 1)` candle
//!   tensor (`SdeMethod::EulerMaruyama.solve`).
//! - `ode_{euler,rk4}_{vec,tensor}/{f32,f64}`: `OdeMethod::Euler`/`Rk4` on the linear field
//!   [`Decay`] (`dx/dt = −x`) with `Vec` and tensor states.
//!
//! Everything runs on one thread ([`single_threaded`] pins candle's elementwise thread pool).
//! Sizes come from [`Sizes::from_env`]: the reference problem (100,000 paths × 1,000 steps,
//! as in `docs/REFERENCE-TIMINGS.md`) or, with `SDE_BENCH_QUICK=1`, a short CI suite of
//! 10,000 paths × 100 steps.
//!
//! ```
//! use sde_benches::{ou, Sizes};
//! let sizes = Sizes::quick();
//! assert_eq!(sizes.path_steps(), 1_000_000);
//! let grid = sizes.grid();
//! assert_eq!(grid.n_steps(), 100);
//! let _ = ou();
//! ```

use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use sde_core::{OrnsteinUhlenbeck, Real, Vector, VectorField};
use sde_solvers::TimeGrid;

/// The environment variable that selects the quick suite (`SDE_BENCH_QUICK=1`).
pub const QUICK_ENV: &str = "SDE_BENCH_QUICK";

/// Length of the reused buffer of the bare-generator benchmark: 2,048 entries (8 KiB of `f32`,
/// 16 KiB of `f64`) stay in L1, as the solvers' chunks do.
pub const NORMAL_BUFFER: usize = 2048;

/// The seed of every benchmark RNG.
pub const SEED: u64 = 0x5eed;

/// Problem sizes and Criterion settings of one suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Number of independent paths (rows of the state).
    pub n_paths: usize,
    /// Number of time steps on `[0, 1]`.
    pub n_steps: usize,
    /// Whether this is the quick suite.
    pub quick: bool,
}

impl Sizes {
    /// The reference problem of `docs/REFERENCE-TIMINGS.md`: 100,000 paths × 1,000 steps.
    pub fn full() -> Self {
        Self {
            n_paths: 100_000,
            n_steps: 1_000,
            quick: false,
        }
    }

    /// The quick CI suite: 10,000 paths × 100 steps.
    pub fn quick() -> Self {
        Self {
            n_paths: 10_000,
            n_steps: 100,
            quick: true,
        }
    }

    /// [`Sizes::quick`] when `SDE_BENCH_QUICK` is set to anything but `0` or empty, else
    /// [`Sizes::full`].
    pub fn from_env() -> Self {
        match std::env::var(QUICK_ENV) {
            Ok(v) if !v.is_empty() && v != "0" => Self::quick(),
            _ => Self::full(),
        }
    }

    /// Elements per iteration: paths × steps.
    pub fn path_steps(&self) -> u64 {
        (self.n_paths * self.n_steps) as u64
    }

    /// The benchmark parameter string, e.g. `100000x1000`.
    pub fn label(&self) -> String {
        format!("{}x{}", self.n_paths, self.n_steps)
    }

    /// The uniform grid of `n_steps` steps on `[0, 1]`.
    pub fn grid(&self) -> TimeGrid {
        TimeGrid::uniform(0.0, 1.0, self.n_steps).expect("n_steps ≥ 1 by construction")
    }

    /// Criterion warm-up time for solver benchmarks.
    pub fn warm_up_time(&self) -> Duration {
        Duration::from_millis(if self.quick { 200 } else { 1000 })
    }

    /// Criterion measurement time for solver benchmarks (a target: with 10 samples of
    /// a ~1 s iteration Criterion takes longer and says so).
    pub fn measurement_time(&self) -> Duration {
        Duration::from_millis(if self.quick { 500 } else { 3000 })
    }
}

/// Makes candle single-threaded for this process: sets `CANDLE_NUM_THREADS=1` (and
/// `RAYON_NUM_THREADS=1`) unless the caller set them. Call it before the first candle
/// operation; later calls change nothing.
///
/// Why: candle 0.11 splits large elementwise binary operations over a pool of spinning
/// threads sized to the physical cores. The benchmarks measure one core (as the reference
/// timings do), and on a 2-core machine with anything else running the spinning made the
/// tensor solvers 10–30× slower and their timings erratic.
pub fn single_threaded() {
    for var in ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"] {
        if std::env::var_os(var).is_none() {
            // Edition 2021: `set_var` is safe; this runs before Criterion starts timing, and
            // the benchmark binary spawns no threads of its own before it.
            std::env::set_var(var, "1");
        }
    }
}

/// The benchmark SDE of `docs/REFERENCE-TIMINGS.md`: `dX = −X dt + 0.5 dW`.
pub fn ou() -> OrnsteinUhlenbeck {
    OrnsteinUhlenbeck::new(1.0, 0.5).expect("valid constants")
}

/// A seeded [`SmallRng`] (xoshiro256++ on 64-bit targets), the same for every run.
pub fn rng() -> SmallRng {
    SmallRng::seed_from_u64(SEED)
}

/// `n` paths started at `x = 1`.
pub fn x0_vec<T: Real>(n: usize) -> Vec<T> {
    vec![T::ONE; n]
}

/// `n` paths started at `x = 1` as an `(n, 1)` CPU tensor of `dtype` (`F32` or `F64`).
pub fn x0_tensor(n: usize, dtype: DType) -> Tensor {
    Tensor::ones((n, 1), dtype, &Device::Cpu).expect("allocating a CPU tensor")
}

/// The linear ODE `dx/dt = −rate · x`, for any [`Vector`] state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decay {
    /// The decay rate.
    pub rate: f64,
}

impl Default for Decay {
    /// `dx/dt = −x`, the drift of [`ou`].
    fn default() -> Self {
        Self { rate: 1.0 }
    }
}

impl<S: Vector> VectorField<S> for Decay {
    fn velocity(&self, x: &S, _t: f64) -> sde_core::Result<S> {
        x.scale(-self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sde_solvers::OdeMethod;

    #[test]
    fn decay_solves_to_exp() {
        // RK4 with h = 0.01 has global error ~h⁴ e^{-1}/2880 ≈ 1e-12.
        let grid = TimeGrid::uniform(0.0, 1.0, 100).unwrap();
        let sol = OdeMethod::Rk4
            .solve(&Decay::default(), x0_vec::<f64>(3), &grid, false)
            .unwrap();
        for x in sol.last() {
            assert!((x - (-1.0f64).exp()).abs() < 1e-10);
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(Sizes::full().path_steps(), 100_000_000);
        assert_eq!(Sizes::full().label(), "100000x1000");
        assert_eq!(x0_tensor(5, DType::F32).dims(), &[5, 1]);
    }
}
