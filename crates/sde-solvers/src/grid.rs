//! Time grids: uniform or user-given, increasing (forward time) or decreasing (reverse time).

use crate::error::{Error, Result};

/// A validated time grid `t_0, t_1, …, t_n` with at least one step, every point finite and
/// the points strictly monotone (increasing for forward integration, decreasing for reverse
/// time). Step `k` has signed size `h_k = t_{k+1} − t_k`.
///
/// ```
/// use sde_solvers::TimeGrid;
/// let g = TimeGrid::uniform(1.0, 0.0, 4).unwrap(); // reverse time, 4 steps
/// assert_eq!(g.points(), &[1.0, 0.75, 0.5, 0.25, 0.0]);
/// assert!(TimeGrid::uniform(0.0, 1.0, 0).is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TimeGrid {
    points: Vec<f64>,
}

impl TimeGrid {
    /// `n_steps` equal steps from `t0` to `t1` (`t1 < t0` integrates backwards in time).
    pub fn uniform(t0: f64, t1: f64, n_steps: usize) -> Result<Self> {
        if n_steps == 0 {
            return Err(Error::invalid("n_steps", 0, "must be at least 1"));
        }
        check_endpoints(t0, t1)?;
        let span = t1 - t0;
        if !span.is_finite() {
            return Err(Error::invalid(
                "t1 - t0",
                span,
                "the interval's length must be finite in f64",
            ));
        }
        let mut points: Vec<f64> = Vec::new();
        let len = n_steps.checked_add(1).ok_or_else(|| {
            Error::invalid(
                "n_steps",
                n_steps,
                "too many steps to hold the grid in memory",
            )
        })?;
        points.try_reserve_exact(len).map_err(|_| {
            Error::invalid(
                "n_steps",
                n_steps,
                "too many steps to hold the grid in memory",
            )
        })?;
        let h = span / n_steps as f64;
        points.extend((0..n_steps).map(|k| t0 + k as f64 * h));
        points.push(t1); // land exactly on t1
                         // Steps below the spacing of f64 numbers near t0 would repeat points.
        let increasing = t1 > t0;
        if points.windows(2).any(|w| {
            if increasing {
                w[1] <= w[0]
            } else {
                w[1] >= w[0]
            }
        }) {
            return Err(Error::invalid(
                "n_steps",
                n_steps,
                "too many steps for the interval: neighbouring grid points coincide in f64",
            ));
        }
        Ok(Self { points })
    }

    /// A user-given grid; errors unless it has at least two finite, strictly monotone points.
    pub fn from_points(points: Vec<f64>) -> Result<Self> {
        if points.len() < 2 {
            return Err(Error::invalid(
                "grid length",
                points.len(),
                "must have at least 2 points",
            ));
        }
        for &t in &points {
            if !t.is_finite() {
                return Err(Error::invalid("grid point", t, "must be finite"));
            }
        }
        let increasing = points[1] > points[0];
        for w in points.windows(2) {
            let ok = if increasing { w[1] > w[0] } else { w[1] < w[0] };
            if !ok {
                return Err(Error::invalid(
                    "grid point",
                    w[1],
                    "points must be strictly monotone",
                ));
            }
        }
        Ok(Self { points })
    }

    /// The grid points.
    pub fn points(&self) -> &[f64] {
        &self.points
    }
    /// Number of steps (points − 1).
    pub fn n_steps(&self) -> usize {
        self.points.len() - 1
    }
    /// First point.
    pub fn start(&self) -> f64 {
        self.points[0]
    }
    /// Last point.
    pub fn end(&self) -> f64 {
        self.points[self.points.len() - 1]
    }
    /// Whether the grid runs backwards in time.
    pub fn is_reverse(&self) -> bool {
        self.end() < self.start()
    }
    /// The steps as `(t_k, h_k)` with signed `h_k`.
    pub fn steps(&self) -> impl ExactSizeIterator<Item = (f64, f64)> + '_ {
        self.points.windows(2).map(|w| (w[0], w[1] - w[0]))
    }
}

fn check_endpoints(t0: f64, t1: f64) -> Result<()> {
    if !t0.is_finite() {
        return Err(Error::invalid("t0", t0, "must be finite"));
    }
    if !t1.is_finite() {
        return Err(Error::invalid("t1", t1, "must be finite"));
    }
    if t0 == t1 {
        return Err(Error::invalid("t1", t1, "must differ from t0"));
    }
    Ok(())
}
