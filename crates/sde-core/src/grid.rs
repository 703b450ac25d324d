//! Densities and coefficients on the grid of a [`FokkerPlanck1d`]: what turns the solver's cell
//! averages into the quantities of the bound chain (`docs/MATH.md` §4).
//!
//! - [`GridDensity`]: a density known by its cell averages `p_i`, as a function of `x`: point
//!   values at the centres recovered from the averages (`p̄_i − Δ²p̄_i/24`), the
//!   log-density interpolated linearly between cell centres (exact for exponential tails,
//!   second order elsewhere), the score `∂_x log p` from the differences of neighbouring
//!   `log p_i` (each exact at its face midpoint for a log-quadratic density, second order in
//!   general) interpolated linearly, and the convolution with a Gaussian likelihood,
//!   `log E[p(y + δ ε)]`, by Gauss–Hermite quadrature.
//! - [`TabulatedSde`]: a drift and a diffusion tabulated once at a set of times on the grid's
//!   faces and centres and interpolated in time (cubic Lagrange), so that the explicit solver's
//!   many small steps (`Δt ∝ Δx²`) do not each evaluate a neural network.
//!
//! ```
//! use sde_core::fokker_planck::FokkerPlanck1d;
//! use sde_core::grid::GridDensity;
//! use sde_core::Gaussian;
//! # fn main() -> sde_core::Result<()> {
//! let fp = FokkerPlanck1d::new(-8.0, 8.0, 400)?;
//! let g = Gaussian::new(0.5, 2.0)?;
//! let p = GridDensity::new(&fp, &fp.project(|x| g.density(x)))?;
//! assert!((p.log_density(1.0) - g.log_density(1.0)).abs() < 1e-3);
//! assert!((p.score(1.0) - (-(1.0 - 0.5) / 2.0)).abs() < 1e-3);
//! # Ok(()) }
//! ```

use crate::error::{Error, Result};
use crate::field::{Diffusion, Drift, Noise};
use crate::fokker_planck::FokkerPlanck1d;
use crate::quadrature::Rule;

/// The floor under a cell average before its logarithm, so that empty cells (density 0 after
/// rounding) give a very negative but finite log-density: `ln(1e-300) ≈ −690.8`.
pub const DENSITY_FLOOR: f64 = 1e-300;

/// A density on a uniform grid of cell centres, from its cell averages (module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct GridDensity {
    x_first: f64,
    dx: f64,
    log_p: Vec<f64>,
    /// `(log p_{i+1} − log p_i) / Δx`, the score at the face `x_i + Δx/2`.
    face_score: Vec<f64>,
    mass: f64,
}

impl GridDensity {
    /// The density of cell averages `p` on `grid` (for example one output of
    /// [`FokkerPlanck1d::solve`]). Averages below [`DENSITY_FLOOR`] are raised to it.
    ///
    /// Errors: [`Error::ShapeMismatch`] unless `p` has one entry per cell;
    /// [`Error::InvalidParameter`] for a negative or non-finite entry (tiny negative values,
    /// `> −1e-12` times the largest, are rounding of a positivity-preserving solver and are
    /// floored).
    pub fn new(grid: &FokkerPlanck1d, p: &[f64]) -> Result<Self> {
        let mass = grid.mass(p)?;
        let top = p.iter().copied().fold(0.0f64, f64::max);
        if let Some(&v) = p
            .iter()
            .find(|v| !v.is_finite() || **v < -1e-12 * top.max(f64::MIN_POSITIVE))
        {
            return Err(Error::invalid(
                "p",
                v,
                "cell averages must be finite and non-negative",
            ));
        }
        if top <= 0.0 {
            return Err(Error::invalid("p", top, "the density is zero everywhere"));
        }
        let dx = grid.dx();
        // Point values from cell averages: p̄_i = p(x_i) + p''(x_i) Δx²/24 + O(Δx⁴), so
        // p(x_i) ≈ p̄_i − (p̄_{i+1} − 2p̄_i + p̄_{i−1})/24 (fourth order where p is smooth; kept
        // within [p̄_i/2, 2p̄_i] where it is not, and left alone in the two end cells).
        let n = p.len();
        let log_p: Vec<f64> = (0..n)
            .map(|i| {
                let v = if i == 0 || i == n - 1 {
                    p[i]
                } else {
                    let c = p[i] - (p[i + 1] - 2.0 * p[i] + p[i - 1]) / 24.0;
                    c.clamp(0.5 * p[i], 2.0 * p[i])
                };
                v.max(DENSITY_FLOOR).ln()
            })
            .collect();
        let face_score = log_p.windows(2).map(|w| (w[1] - w[0]) / dx).collect();
        Ok(Self {
            x_first: grid.centres()[0],
            dx,
            log_p,
            face_score,
            mass,
        })
    }

    /// `Σ p_i Δx`, the mass on the grid.
    pub fn mass(&self) -> f64 {
        self.mass
    }

    /// The first and last cell centres: inside them the interpolation is second order;
    /// outside, the log-density is extended linearly (an exponential tail).
    pub fn centre_range(&self) -> (f64, f64) {
        let n = self.log_p.len();
        (self.x_first, self.x_first + (n - 1) as f64 * self.dx)
    }

    /// `log p(x)`: linear interpolation of `log p_i` between cell centres, extended linearly
    /// (with the outermost face's score) beyond them.
    pub fn log_density(&self, x: f64) -> f64 {
        let n = self.log_p.len();
        let u = (x - self.x_first) / self.dx;
        if u <= 0.0 {
            return self.log_p[0] + u * self.dx * self.face_score[0];
        }
        let last = (n - 1) as f64;
        if u >= last {
            return self.log_p[n - 1] + (u - last) * self.dx * self.face_score[n - 2];
        }
        let i = (u.floor() as usize).min(n - 2);
        let w = u - i as f64;
        (1.0 - w) * self.log_p[i] + w * self.log_p[i + 1]
    }

    /// `p(x) = exp(log p(x))`.
    pub fn density(&self, x: f64) -> f64 {
        self.log_density(x).exp()
    }

    /// The score `∂_x log p(x)`: the face differences `(log p_{i+1} − log p_i)/Δx`, located at
    /// the faces, interpolated linearly between faces and constant beyond the outermost ones.
    pub fn score(&self, x: f64) -> f64 {
        let m = self.face_score.len();
        // Face j lies at x_first + (j + ½) Δx.
        let u = (x - self.x_first) / self.dx - 0.5;
        if u <= 0.0 || m == 1 {
            return self.face_score[0];
        }
        let last = (m - 1) as f64;
        if u >= last {
            return self.face_score[m - 1];
        }
        let j = (u.floor() as usize).min(m - 2);
        let w = u - j as f64;
        (1.0 - w) * self.face_score[j] + w * self.face_score[j + 1]
    }

    /// `log ∫ N(y; x, δ²) p(x) dx = log E_{ε ~ N(0,1)}[p(y + δ ε)]` by the Gauss–Hermite rule
    /// `gh`, summed in log space: the exact log-likelihood of `y` under a Gaussian likelihood of
    /// width `delta` (`docs/MATH.md` §4).
    pub fn log_convolved(&self, y: f64, delta: f64, gh: &Rule) -> f64 {
        let terms: Vec<f64> = gh
            .nodes
            .iter()
            .zip(&gh.weights)
            .map(|(&e, &w)| w.ln() + self.log_density(y + delta * e))
            .collect();
        let top = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        top + terms.iter().map(|v| (v - top).exp()).sum::<f64>().ln()
    }
}

/// A drift and diffusion tabulated on a grid's faces and centres at increasing times and
/// interpolated in time by cubic Lagrange polynomials through four neighbouring times (all of
/// them where the table has fewer), for the Fokker–Planck solver: it may only be evaluated at the
/// faces (drift) and centres (diffusion) of the grid it was built for.
#[derive(Debug, Clone, PartialEq)]
pub struct TabulatedSde {
    times: Vec<f64>,
    faces: Vec<f64>,
    centres: Vec<f64>,
    /// `drift[k * n_faces + j] = f(face_j, times[k])`.
    drift: Vec<f64>,
    /// `d[k * n_centres + i] = g(centre_i, times[k])²`.
    d: Vec<f64>,
}

impl TabulatedSde {
    /// A table on `grid`: `drift` holds `f` at the faces for each of `times` (time-major,
    /// `times.len() × (n_cells − 1)` values), `diffusion2` holds `D = g²` at the centres
    /// (`times.len() × n_cells`).
    ///
    /// Errors unless `times` has at least two finite, strictly increasing entries, the tables
    /// have those lengths, every value is finite and every `D` is non-negative.
    pub fn new(
        grid: &FokkerPlanck1d,
        times: Vec<f64>,
        drift: Vec<f64>,
        diffusion2: Vec<f64>,
    ) -> Result<Self> {
        if times.len() < 2 {
            return Err(Error::invalid(
                "times",
                times.len(),
                "need at least two table times",
            ));
        }
        if let Some(&t) = times.iter().find(|t| !t.is_finite()) {
            return Err(Error::invalid("times", t, "must be finite"));
        }
        if let Some(w) = times.windows(2).find(|w| w[1] <= w[0]) {
            return Err(Error::invalid("times", w[1], "must be strictly increasing"));
        }
        let (nf, nc) = (grid.faces().len(), grid.centres().len());
        for (name, v, width) in [("drift", &drift, nf), ("diffusion2", &diffusion2, nc)] {
            if v.len() != times.len() * width {
                return Err(Error::ShapeMismatch {
                    name,
                    left: format!("[{}]", v.len()),
                    right: format!("[{} times × {width}]", times.len()),
                });
            }
        }
        if let Some(&v) = drift.iter().find(|v| !v.is_finite()) {
            return Err(Error::invalid("drift", v, "must be finite"));
        }
        if let Some(&v) = diffusion2.iter().find(|v| !(v.is_finite() && **v >= 0.0)) {
            return Err(Error::invalid(
                "diffusion2",
                v,
                "must be finite and non-negative",
            ));
        }
        Ok(Self {
            times,
            faces: grid.faces().to_vec(),
            centres: grid.centres().to_vec(),
            drift,
            d: diffusion2,
        })
    }

    /// The table's times.
    pub fn times(&self) -> &[f64] {
        &self.times
    }

    /// The table interpolated to `t`: `Σ_k L_k(t) table[k]` over the (up to) four nearest times.
    fn interpolate(&self, table: &[f64], width: usize, t: f64) -> Result<Vec<f64>> {
        let n = self.times.len();
        let (first, last) = (self.times[0], self.times[n - 1]);
        if !(t >= first && t <= last) {
            return Err(Error::invalid(
                "t",
                t,
                "outside the table's times: tabulate over the whole solve",
            ));
        }
        // The interval [t_k, t_{k+1}] holding t, and the stencil k−1 … k+2 clipped to the table.
        // (shifted inwards at the ends so that it keeps four points when the table has them).
        let k = self.times.partition_point(|&s| s <= t).clamp(1, n - 1) - 1;
        let width_t = n.min(4);
        let lo = k.saturating_sub(1).min(n - width_t);
        let hi = lo + width_t - 1;
        let stencil = &self.times[lo..=hi];
        let mut out = vec![0.0; width];
        for (a, &ta) in stencil.iter().enumerate() {
            let l: f64 = stencil
                .iter()
                .enumerate()
                .filter(|&(b, _)| b != a)
                .map(|(_, &tb)| (t - tb) / (ta - tb))
                .product();
            let row = &table[(lo + a) * width..(lo + a + 1) * width];
            for (o, v) in out.iter_mut().zip(row) {
                *o += l * v;
            }
        }
        Ok(out)
    }

    fn check_points(&self, name: &'static str, x: &[f64], expected: &[f64]) -> Result<()> {
        if x != expected {
            return Err(Error::ShapeMismatch {
                name,
                left: format!("{} points", x.len()),
                right: format!("the {} grid points the table was built on", expected.len()),
            });
        }
        Ok(())
    }

    fn d_at(&self, x: &[f64], t: f64) -> Result<Vec<f64>> {
        self.check_points("diffusion x", x, &self.centres)?;
        // Cubic interpolation can undershoot near D = 0: clip at 0.
        Ok(self
            .interpolate(&self.d, self.centres.len(), t)?
            .into_iter()
            .map(|v| v.max(0.0))
            .collect())
    }
}

impl Drift<Vec<f64>> for TabulatedSde {
    /// The drift at the grid's faces (an error at any other points).
    fn drift(&self, x: &Vec<f64>, t: f64) -> Result<Vec<f64>> {
        self.check_points("drift x", x, &self.faces)?;
        self.interpolate(&self.drift, self.faces.len(), t)
    }
}

impl Diffusion<Vec<f64>> for TabulatedSde {
    /// `g = √D` at the grid's centres (an error at any other points).
    fn diffusion(&self, x: &Vec<f64>, t: f64) -> Result<Noise<Vec<f64>>> {
        Ok(Noise::Diagonal(
            self.d_at(x, t)?.into_iter().map(f64::sqrt).collect(),
        ))
    }

    /// `∂_x D` at the centres by differences of the tabulated `D` (centred inside, one-sided at
    /// the ends).
    fn diffusion_divergence(&self, x: &Vec<f64>, t: f64) -> Result<Option<Vec<f64>>> {
        let d = self.d_at(x, t)?;
        let n = d.len();
        let h = self.centres[1] - self.centres[0];
        Ok(Some(
            (0..n)
                .map(|i| match i {
                    0 => (d[1] - d[0]) / h,
                    i if i == n - 1 => (d[n - 1] - d[n - 2]) / h,
                    i => (d[i + 1] - d[i - 1]) / (2.0 * h),
                })
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gaussian::Gaussian;
    use crate::process::{LinearGaussianSde, OrnsteinUhlenbeck};

    #[test]
    fn log_density_and_score_of_a_gaussian_are_second_order() {
        let g = Gaussian::new(0.3, 1.5).unwrap();
        let err = |n: usize| {
            let fp = FokkerPlanck1d::new(-10.0, 10.0, n).unwrap();
            let p = GridDensity::new(&fp, &fp.project(|x| g.density(x))).unwrap();
            let xs: Vec<f64> = (0..=40).map(|i| -4.0 + 0.2 * i as f64 + 0.013).collect();
            let e_log = xs
                .iter()
                .map(|&x| (p.log_density(x) - g.log_density(x)).abs())
                .fold(0.0, f64::max);
            let e_score = xs
                .iter()
                .map(|&x| (p.score(x) + (x - 0.3) / 1.5).abs())
                .fold(0.0, f64::max);
            (e_log, e_score)
        };
        let (l1, s1) = err(200);
        let (l2, s2) = err(400);
        // Second order: halving Δx divides the error by about 4 (3 allows the pre-asymptotic
        // mix of interpolation and cell-average errors).
        assert!(l1 / l2 > 3.0 && s1 / s2 > 3.0, "{l1} {l2} {s1} {s2}");
        assert!(l2 < 1e-3 && s2 < 1e-3, "{l2} {s2}");
    }

    #[test]
    fn the_convolved_log_likelihood_matches_the_closed_form() {
        let g = Gaussian::new(-1.0, 0.8).unwrap();
        let fp = FokkerPlanck1d::new(-12.0, 10.0, 800).unwrap();
        let p = GridDensity::new(&fp, &fp.project(|x| g.density(x))).unwrap();
        let gh = crate::quadrature::gauss_hermite(20).unwrap();
        assert!((p.mass() - 1.0).abs() < 1e-12);
        // log ∫ N(y; x, δ²) N(x; −1, 0.8) dx = log N(y; −1, 0.8 + δ²), for wide and narrow δ.
        for delta in [0.01, 0.1, 1.0] {
            let y = 0.7;
            let exact = Gaussian::new(-1.0, 0.8 + delta * delta)
                .unwrap()
                .log_density(y);
            let got = p.log_convolved(y, delta, &gh);
            // 1e-4: the log-linear interpolation error (Δx = 0.0275, (log p)'' = −1.25).
            assert!((got - exact).abs() < 1e-4, "δ {delta}: {got} vs {exact}");
        }
    }

    #[test]
    fn empty_cells_and_bad_input() {
        let fp = FokkerPlanck1d::new(0.0, 1.0, 4).unwrap();
        let p = GridDensity::new(&fp, &[0.0, 2.0, 2.0, 0.0]).unwrap();
        assert!(p.log_density(0.0).is_finite() && p.score(0.1).is_finite());
        for bad in [vec![1.0, f64::NAN, 1.0, 1.0], vec![1.0, -1.0, 1.0, 1.0]] {
            let e = GridDensity::new(&fp, &bad).unwrap_err().to_string();
            assert!(e.contains("invalid p"), "{e}");
        }
        assert!(GridDensity::new(&fp, &[0.0; 4]).is_err());
        assert!(GridDensity::new(&fp, &[1.0; 3]).is_err());
    }

    /// An Ornstein–Uhlenbeck process solved through its table agrees with the exact marginal
    /// as closely as when solved directly.
    #[test]
    fn tabulated_sde_reproduces_the_direct_solve() {
        let ou = OrnsteinUhlenbeck::new(1.5, 0.7).unwrap();
        let fp = FokkerPlanck1d::new(-6.0, 6.0, 240).unwrap();
        let times: Vec<f64> = (0..=20).map(|k| k as f64 / 20.0).collect();
        let mut drift = Vec::new();
        let mut d2 = Vec::new();
        for &t in &times {
            drift.extend(Drift::<Vec<f64>>::drift(&ou, &fp.faces().to_vec(), t).unwrap());
            d2.extend(fp.centres().iter().map(|_| 0.49));
        }
        let table = TabulatedSde::new(&fp, times.clone(), drift, d2).unwrap();
        let start = Gaussian::new(1.0, 0.3).unwrap();
        let p0 = fp.project(|x| start.density(x));
        let direct = fp.solve(&ou, &p0, 0.0, &[1.0]).unwrap();
        let tab = fp.solve(&table, &p0, 0.0, &[1.0]).unwrap();
        let diff: f64 = direct[0]
            .iter()
            .zip(&tab[0])
            .map(|(a, b)| (a - b).abs())
            .sum::<f64>()
            * fp.dx();
        // The coefficients are time-independent here: the table is exact up to rounding.
        assert!(diff < 1e-12, "{diff}");
        let (m, v) = ou.mean_variance(1.0, 0.3, 1.0);
        let exact = Gaussian::new(m, v).unwrap();
        assert!(fp.l1_distance(&tab[0], |x| exact.density(x)).unwrap() < 1e-2);
        assert!(table.drift(&vec![0.0; 239], 0.5).is_err());
        assert!(table.drift(&fp.faces().to_vec(), 1.5).is_err());
    }

    #[test]
    fn time_interpolation_is_cubic() {
        // f(face, t) = t³ − 2t: reproduced exactly by cubic interpolation on 6 uneven times.
        let fp = FokkerPlanck1d::new(0.0, 1.0, 3).unwrap();
        let times = vec![0.0, 0.1, 0.35, 0.5, 0.8, 1.0];
        let f = |t: f64| t.powi(3) - 2.0 * t;
        let drift: Vec<f64> = times.iter().flat_map(|&t| [f(t), f(t)]).collect();
        let d2 = vec![1.0; 18];
        let table = TabulatedSde::new(&fp, times, drift, d2).unwrap();
        for t in [0.0, 0.05, 0.2, 0.49, 0.9, 1.0] {
            let v = table.drift(&fp.faces().to_vec(), t).unwrap();
            assert!((v[0] - f(t)).abs() < 1e-14, "t {t}");
        }
        let bad = TabulatedSde::new(&fp, vec![0.0, 0.0], vec![0.0; 4], vec![0.0; 6]);
        assert!(bad.unwrap_err().to_string().contains("times"));
        let bad = TabulatedSde::new(&fp, vec![0.0, 1.0], vec![0.0; 4], vec![-1.0; 6]);
        assert!(bad.unwrap_err().to_string().contains("diffusion2"));
    }
}
