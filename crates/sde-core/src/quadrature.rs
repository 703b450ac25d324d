//! Gaussian quadrature rules: Gauss–Legendre on an interval (time integrals such as
//! `∫₀¹ R(t) dt`) and Gauss–Hermite for expectations over a standard normal (`E_{ε}[g(ε)]`,
//! the expectations over a Gaussian `q_t` in `docs/MATH.md` §4).
//!
//! Both are computed by Newton's method on the three-term recurrence of the orthogonal
//! polynomials, to double precision; an `n`-point rule is exact for polynomials of degree
//! `2n − 1`.
//!
//! ```
//! use sde_core::quadrature::{GaussHermite, GaussLegendre};
//! # fn main() -> sde_core::Result<()> {
//! let gh = GaussHermite::new(8)?;
//! // E[ε⁴] = 3 for ε ~ N(0, 1).
//! assert!((gh.expect(|e| e.powi(4)) - 3.0).abs() < 1e-12);
//! let gl = GaussLegendre::new(5, 0.0, 1.0)?;
//! assert!((gl.integrate(|t| t.powi(9)) - 0.1).abs() < 1e-14);
//! # Ok(()) }
//! ```

use crate::error::{Error, Result};

/// The most nodes a rule may have (the Newton start values are tested up to here).
pub const MAX_NODES: usize = 100;

fn check_n(n: usize) -> Result<()> {
    if n == 0 || n > MAX_NODES {
        return Err(Error::invalid("n_nodes", n, "must be in 1..=100"));
    }
    Ok(())
}

/// The `n`-point Gauss–Hermite rule for the standard normal: `E[g(ε)] ≈ Σ_i w_i g(ε_i)`,
/// `ε ~ N(0, 1)`, weights summing to 1 (the "probabilists'" form).
#[derive(Debug, Clone, PartialEq)]
pub struct GaussHermite {
    nodes: Vec<f64>,
    weights: Vec<f64>,
}

impl GaussHermite {
    /// The rule with `n` nodes; errors unless `1 ≤ n ≤ 100`.
    pub fn new(n: usize) -> Result<Self> {
        check_n(n)?;
        // Roots of the physicists' Hermite polynomial H_n (weight e^{−z²}), by Newton's method
        // on the orthonormal recurrence, from the asymptotic start values of the largest roots
        // and extrapolation from the previous two for the rest.
        let nf = n as f64;
        let mut z_pos: Vec<f64> = Vec::with_capacity(n.div_ceil(2));
        let mut w_pos: Vec<f64> = Vec::with_capacity(n.div_ceil(2));
        let mut z = 0.0;
        for i in 0..n.div_ceil(2) {
            z = match i {
                0 => (2.0 * nf + 1.0).sqrt() - 1.855_75 * (2.0 * nf + 1.0).powf(-1.0 / 6.0),
                1 => z - 1.14 * nf.powf(0.426) / z,
                2 => 1.86 * z - 0.86 * z_pos[0],
                3 => 1.91 * z - 0.91 * z_pos[1],
                _ => 2.0 * z - z_pos[i - 2],
            };
            let mut pp = 0.0;
            for _ in 0..100 {
                let (p, d) = hermite_orthonormal(n, z);
                pp = d;
                let dz = p / d;
                z -= dz;
                if dz.abs() <= 1e-15 * z.abs().max(1.0) {
                    break;
                }
            }
            let (_, d) = hermite_orthonormal(n, z);
            pp = if d.is_finite() { d } else { pp };
            z_pos.push(z);
            w_pos.push(2.0 / (pp * pp));
        }
        // Symmetric nodes, ascending; ε = √2 z, weights divided by √π.
        let scale_w = 1.0 / std::f64::consts::PI.sqrt();
        let mut nodes = Vec::with_capacity(n);
        let mut weights = Vec::with_capacity(n);
        for (z, w) in z_pos.iter().zip(&w_pos) {
            nodes.push(-z * std::f64::consts::SQRT_2);
            weights.push(w * scale_w);
        }
        let skip = n % 2; // the middle root 0 appears once
        for (z, w) in z_pos.iter().zip(&w_pos).rev().skip(skip) {
            nodes.push(z * std::f64::consts::SQRT_2);
            weights.push(w * scale_w);
        }
        if nodes.iter().chain(&weights).any(|v| !v.is_finite()) {
            return Err(Error::invalid(
                "n_nodes",
                n,
                "Newton's method did not converge",
            ));
        }
        Ok(Self { nodes, weights })
    }

    /// The nodes `ε_i`, ascending.
    pub fn nodes(&self) -> &[f64] {
        &self.nodes
    }

    /// The weights `w_i` (positive, summing to 1).
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// `Σ_i w_i g(ε_i) ≈ E[g(ε)]`.
    pub fn expect(&self, g: impl Fn(f64) -> f64) -> f64 {
        self.nodes
            .iter()
            .zip(&self.weights)
            .map(|(&e, &w)| w * g(e))
            .sum()
    }
}

/// `(h_n(z), h_n'(z))` of the orthonormal physicists' Hermite polynomial.
fn hermite_orthonormal(n: usize, z: f64) -> (f64, f64) {
    let mut p1 = std::f64::consts::PI.powf(-0.25);
    let mut p2 = 0.0;
    for j in 1..=n {
        let jf = j as f64;
        let p3 = p2;
        p2 = p1;
        p1 = z * (2.0 / jf).sqrt() * p2 - ((jf - 1.0) / jf).sqrt() * p3;
    }
    (p1, (2.0 * n as f64).sqrt() * p2)
}

/// The `n`-point Gauss–Legendre rule on `[a, b]`: `∫_a^b g(t) dt ≈ Σ_i w_i g(t_i)`.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussLegendre {
    nodes: Vec<f64>,
    weights: Vec<f64>,
}

impl GaussLegendre {
    /// The rule with `n` nodes on `[a, b]`; errors unless `1 ≤ n ≤ 100` and `a < b` are finite.
    pub fn new(n: usize, a: f64, b: f64) -> Result<Self> {
        check_n(n)?;
        if !(a.is_finite() && b.is_finite() && a < b) {
            return Err(Error::invalid(
                "interval",
                format!("[{a}, {b}]"),
                "must be finite with a < b",
            ));
        }
        let nf = n as f64;
        let (mid, half) = (0.5 * (a + b), 0.5 * (b - a));
        let mut nodes = vec![0.0; n];
        let mut weights = vec![0.0; n];
        for i in 0..n.div_ceil(2) {
            // Start from the Chebyshev-like approximation of the i-th largest root.
            let mut z = (std::f64::consts::PI * (i as f64 + 0.75) / (nf + 0.5)).cos();
            let mut dp = 1.0;
            for _ in 0..100 {
                let (p, d) = legendre(n, z);
                dp = d;
                let dz = p / d;
                z -= dz;
                if dz.abs() <= 1e-16 {
                    break;
                }
            }
            let (_, d) = legendre(n, z);
            if d.is_finite() {
                dp = d;
            }
            let w = 2.0 / ((1.0 - z * z) * dp * dp);
            nodes[i] = mid - half * z;
            nodes[n - 1 - i] = mid + half * z;
            weights[i] = half * w;
            weights[n - 1 - i] = half * w;
        }
        Ok(Self { nodes, weights })
    }

    /// The nodes, ascending.
    pub fn nodes(&self) -> &[f64] {
        &self.nodes
    }

    /// The weights (summing to `b − a`).
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// `Σ_i w_i g(t_i) ≈ ∫_a^b g`.
    pub fn integrate(&self, g: impl Fn(f64) -> f64) -> f64 {
        self.nodes
            .iter()
            .zip(&self.weights)
            .map(|(&t, &w)| w * g(t))
            .sum()
    }
}

/// `(P_n(z), P_n'(z))` of the Legendre polynomial.
fn legendre(n: usize, z: f64) -> (f64, f64) {
    let (mut p1, mut p2) = (1.0, 0.0);
    for j in 1..=n {
        let jf = j as f64;
        let p3 = p2;
        p2 = p1;
        p1 = ((2.0 * jf - 1.0) * z * p2 - (jf - 1.0) * p3) / jf;
    }
    (p1, n as f64 * (z * p1 - p2) / (z * z - 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `E[ε^{2k}] = (2k − 1)!!` for ε ~ N(0, 1).
    fn double_factorial_odd(k: u32) -> f64 {
        (1..=k).map(|j| (2 * j - 1) as f64).product()
    }

    #[test]
    fn hermite_integrates_normal_moments_exactly_up_to_degree_2n_minus_1() {
        for n in [1, 2, 3, 5, 8, 12, 20, 40, 64, 100] {
            let gh = GaussHermite::new(n).unwrap();
            assert_eq!(gh.nodes().len(), n);
            assert!(gh.nodes().windows(2).all(|w| w[0] < w[1]), "n = {n}");
            // Sums of n positive weights: rounding of order n·1e-16.
            assert!(
                (gh.weights().iter().sum::<f64>() - 1.0).abs() < 1e-13,
                "n = {n}"
            );
            for k in 1..n.min(12) as u32 {
                let exact = double_factorial_odd(k);
                let got = gh.expect(|e| e.powi(2 * k as i32));
                // Relative: the moments grow like (2k)!/(2^k k!); 1e-11 allows rounding of the
                // large nodes' powers.
                assert!((got / exact - 1.0).abs() < 1e-11, "n = {n} k = {k}: {got}");
                assert!(gh.expect(|e| e.powi(2 * k as i32 - 1)).abs() < 1e-9 * exact);
            }
        }
    }

    #[test]
    fn hermite_converges_for_smooth_functions() {
        // E[cos ε] = e^{−1/2}: spectral convergence.
        let gh = GaussHermite::new(20).unwrap();
        assert!((gh.expect(f64::cos) - (-0.5f64).exp()).abs() < 1e-14);
    }

    #[test]
    fn legendre_is_exact_to_degree_2n_minus_1() {
        for n in [1, 2, 3, 4, 7, 16, 32, 64, 100] {
            let gl = GaussLegendre::new(n, -0.5, 2.0).unwrap();
            assert!((gl.weights().iter().sum::<f64>() - 2.5).abs() < 1e-13);
            for k in 0..(2 * n).min(30) as i32 {
                let exact = (2f64.powi(k + 1) - (-0.5f64).powi(k + 1)) / (k + 1) as f64;
                let got = gl.integrate(|t| t.powi(k));
                // Relative 1e-12: rounding of the sum of polynomial values up to 2^29.
                assert!(
                    (got - exact).abs() < 1e-12 * exact.abs().max(1.0),
                    "n {n} k {k}"
                );
            }
        }
    }

    #[test]
    fn bad_sizes_and_intervals_are_named_errors() {
        for n in [0, 101] {
            let e = GaussHermite::new(n).unwrap_err().to_string();
            assert!(e.contains("n_nodes") && e.contains(&n.to_string()), "{e}");
            assert!(GaussLegendre::new(n, 0.0, 1.0).is_err());
        }
        for (a, b) in [
            (1.0, 0.0),
            (0.0, 0.0),
            (f64::NAN, 1.0),
            (0.0, f64::INFINITY),
        ] {
            let e = GaussLegendre::new(4, a, b).unwrap_err().to_string();
            assert!(e.contains("interval"), "{e}");
        }
    }
}
