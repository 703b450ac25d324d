//! Gaussian quadrature rules in `f64`: Gauss–Hermite for expectations over a standard normal
//! and Gauss–Legendre on an interval.
//!
//! The one-dimensional models of this workspace take expectations over `ε ~ N(0, 1)` (the
//! variational marginals are flows of a standard normal) and integrals over `t ∈ [0, 1]`; an
//! `n`-point Gauss rule is exact for polynomials of degree `2n − 1`, so a few dozen nodes give
//! deterministic, differentiable estimates where Monte-Carlo would need thousands of draws.
//!
//! Both rules come from Newton's method on the orthogonal polynomials (`O(n²)`, microseconds).
//!
//! ```
//! use sde_core::quadrature::gauss_hermite;
//! # fn main() -> sde_core::Result<()> {
//! let rule = gauss_hermite(10)?;
//! // E[ε⁴] = 3 for ε ~ N(0, 1), exactly up to rounding.
//! assert!((rule.expect(|e| e.powi(4)) - 3.0).abs() < 1e-12);
//! # Ok(()) }
//! ```

use std::f64::consts::{PI, SQRT_2};

use crate::error::{Error, Result};

/// The most nodes a Gauss–Legendre rule may have.
pub const MAX_LEGENDRE_NODES: usize = 100;

/// A quadrature rule: `Σ_i w_i g(x_i)` approximates an integral of `g`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The nodes `x_i`, increasing.
    pub nodes: Vec<f64>,
    /// The weights `w_i > 0`.
    pub weights: Vec<f64>,
}

impl Rule {
    /// `Σ_i w_i g(x_i)`.
    pub fn expect(&self, g: impl Fn(f64) -> f64) -> f64 {
        self.nodes
            .iter()
            .zip(&self.weights)
            .map(|(&x, &w)| w * g(x))
            .sum()
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the rule has no nodes (never, for the rules built here).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

fn check_n(n: usize, max: usize, why: &'static str) -> Result<()> {
    if n == 0 || n > max {
        return Err(Error::invalid("n", n, why));
    }
    Ok(())
}

/// Gauss–Hermite nodes `ε_j` and weights `w_j` for expectations under `N(0, 1)`:
/// `E[g(ε)] ≈ Σ_j w_j g(ε_j)`, exact for polynomials of degree `2n − 1`; nodes ascending,
/// weights summing to one.
///
/// Computed in `f64` by Newton's method on the orthonormal Hermite polynomials (the
/// recurrence stays in range for any `n`, unlike `n!`-scaled forms), started from the
/// classical asymptotic guesses for the largest roots (Numerical Recipes' `gauher`), then
/// rescaled from the weight `exp(−x²)` to `N(0, 1)`.
///
/// ```
/// # fn main() -> sde_core::Result<()> {
/// let rule = sde_core::quadrature::gauss_hermite(3)?; // nodes −√3, 0, √3
/// assert!((rule.weights[1] - 2.0 / 3.0).abs() < 1e-14);
/// # Ok(()) }
/// ```
///
/// # Errors
/// `n` outside `1..=128`.
pub fn gauss_hermite(n: usize) -> Result<Rule> {
    check_n(n, 128, "must be between 1 and 128")?;
    let nf = n as f64;
    // The orthonormal polynomial p_n(z) and p_{n−1}(z) for the weight exp(−z²).
    let eval = |z: f64| {
        let (mut p1, mut p2) = (PI.powf(-0.25), 0.0);
        for j in 1..=n {
            let jf = j as f64;
            let p3 = p2;
            p2 = p1;
            p1 = z * (2.0 / jf).sqrt() * p2 - ((jf - 1.0) / jf).sqrt() * p3;
        }
        (p1, p2)
    };
    let half = n.div_ceil(2);
    let mut roots: Vec<(f64, f64)> = Vec::with_capacity(half);
    let mut z = 0.0;
    for i in 0..half {
        z = match i {
            0 => (2.0 * nf + 1.0).sqrt() - 1.855_75 * (2.0 * nf + 1.0).powf(-1.0 / 6.0),
            1 => z - 1.14 * nf.powf(0.426) / z,
            2 => 1.86 * z - 0.86 * roots[0].0,
            3 => 1.91 * z - 0.91 * roots[1].0,
            _ => 2.0 * z - roots[i - 2].0,
        };
        let mut dp = 0.0;
        for _ in 0..100 {
            let (p, q) = eval(z);
            dp = (2.0 * nf).sqrt() * q;
            let step = p / dp;
            z -= step;
            if step.abs() <= 1e-15 * z.abs().max(1.0) {
                break;
            }
        }
        let (_, q) = eval(z);
        dp = if q.is_finite() {
            (2.0 * nf).sqrt() * q
        } else {
            dp
        };
        // Weight for exp(−z²): 2/p_n′(z)²; for N(0, 1): divide by √π, node z√2.
        roots.push((z, 2.0 / (dp * dp) / PI.sqrt()));
    }
    let mut nodes = Vec::with_capacity(n);
    let mut weights = Vec::with_capacity(n);
    for &(z, w) in &roots {
        nodes.push(-z * SQRT_2);
        weights.push(w);
    }
    for &(z, w) in roots.iter().rev().skip(n % 2) {
        nodes.push(z * SQRT_2);
        weights.push(w);
    }
    // An odd rule's middle root is 0; make it exactly so (Newton leaves ~1e-17).
    if n % 2 == 1 {
        nodes[n / 2] = 0.0;
    }
    Ok(Rule { nodes, weights })
}

/// The `n`-point Gauss–Legendre rule on `[a, b]` (exact for polynomials of degree `2n − 1`):
/// Newton's method on `P_n` from the classical guesses `cos(π (i − ¼)/(n + ½))`, weights
/// `2 / ((1 − x²) P_n′(x)²)` scaled to the interval. `O(n²)`.
///
/// # Errors
/// `n` outside `1..=100`; `a`, `b` not finite or `a ≥ b`.
pub fn gauss_legendre(n: usize, a: f64, b: f64) -> Result<Rule> {
    check_n(n, MAX_LEGENDRE_NODES, "must be between 1 and 100")?;
    if !(a.is_finite() && b.is_finite() && a < b) {
        return Err(Error::invalid(
            "interval",
            format!("[{a}, {b}]"),
            "must be finite with a < b",
        ));
    }
    // (P_n(x), P_n′(x)) by (k + 1) P_{k+1} = (2k + 1) x P_k − k P_{k−1}.
    let legendre = |x: f64| {
        let (mut p0, mut p1) = (1.0, x);
        for k in 1..n {
            let p2 = ((2 * k + 1) as f64 * x * p1 - k as f64 * p0) / (k + 1) as f64;
            p0 = p1;
            p1 = p2;
        }
        (p1, n as f64 * (x * p1 - p0) / (x * x - 1.0))
    };
    let nf = n as f64;
    let half = 0.5 * (b - a);
    let mut nodes = vec![0.0; n];
    let mut weights = vec![0.0; n];
    for i in 0..n.div_ceil(2) {
        let mut x = (PI * (i as f64 + 0.75) / (nf + 0.5)).cos();
        let mut dp = 1.0;
        for _ in 0..100 {
            let (p, d) = legendre(x);
            dp = d;
            let step = p / d;
            x -= step;
            if step.abs() <= 1e-16 {
                break;
            }
        }
        let (_, d) = legendre(x);
        if d.is_finite() && d != 0.0 {
            dp = d;
        }
        let w = 2.0 / ((1.0 - x * x) * dp * dp);
        // Roots come in ± pairs: x_i > 0 fills the top, −x_i the bottom.
        nodes[n - 1 - i] = a + half * (1.0 + x);
        nodes[i] = a + half * (1.0 - x);
        weights[n - 1 - i] = half * w;
        weights[i] = half * w;
    }
    if n % 2 == 1 {
        nodes[n / 2] = a + half; // the middle root is exactly 0
    }
    Ok(Rule { nodes, weights })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauss_hermite_rules_are_exact_for_their_degree() -> Result<()> {
        // The 3-point rule in closed form: nodes −√3, 0, √3, weights 1/6, 2/3, 1/6 (Newton stops
        // within 1e-15 of the root; weights follow to rounding).
        let r = gauss_hermite(3)?;
        let r3 = 3f64.sqrt();
        for ((x, w), (ex, ew)) in r.nodes.iter().zip(&r.weights).zip([
            (-r3, 1.0 / 6.0),
            (0.0, 2.0 / 3.0),
            (r3, 1.0 / 6.0),
        ]) {
            assert!(
                (x - ex).abs() < 1e-14 && (w - ew).abs() < 1e-14,
                "({x}, {w})"
            );
        }
        // Every size: ascending, symmetric nodes; positive weights summing to one.
        for n in 1..=128 {
            let r = gauss_hermite(n)?;
            assert_eq!((r.nodes.len(), r.weights.len()), (n, n));
            assert!(
                r.nodes.windows(2).all(|p| p[0] < p[1]),
                "n = {n}: not ascending"
            );
            for (a, b) in r.nodes.iter().zip(r.nodes.iter().rev()) {
                assert!(
                    (a + b).abs() < 1e-12 * a.abs().max(1.0),
                    "n = {n}: {a} vs {b}"
                );
            }
            assert!(r.weights.iter().all(|&w| w >= 0.0));
            let total: f64 = r.weights.iter().sum();
            assert!(
                (total - 1.0).abs() < 1e-13,
                "n = {n}: weights sum to {total}"
            );
        }
        // Smooth non-polynomials: E[cos ε] = e^{−1/2}, E[e^ε] = e^{1/2}; the rule's error for
        // these entire functions is far below rounding at n = 32.
        let r = gauss_hermite(32)?;
        assert!((r.expect(f64::cos) - (-0.5f64).exp()).abs() < 1e-14);
        assert!((r.expect(f64::exp) - 0.5f64.exp()).abs() < 1e-14);
        Ok(())
    }

    #[test]
    fn the_rules_integrate_polynomials_exactly() -> Result<()> {
        // Moments of N(0, 1) and of U(0, 1), exact for these degrees: what remains is rounding.
        for n in [10, 20, 64, 128] {
            let r = gauss_hermite(n)?;
            assert!((r.weights.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            for (k, m) in [(2, 1.0), (4, 3.0), (6, 15.0), (8, 105.0)] {
                let s = r.expect(|x| x.powi(k));
                assert!((s - m).abs() < 1e-11 * m, "n = {n}: E[ε^{k}] = {s}");
            }
        }
        for n in [1, 40, 100] {
            let r = gauss_legendre(n, 0.0, 1.0)?;
            for k in (0..2 * n).step_by(7) {
                let s = r.expect(|t| t.powi(k as i32));
                let exact = 1.0 / (k + 1) as f64;
                assert!((s - exact).abs() < 1e-13, "n = {n}: ∫ t^{k} = {s}");
            }
        }
        let r = gauss_legendre(5, -2.0, 3.0)?;
        assert!((r.expect(|x| x * x) - 35.0 / 3.0).abs() < 1e-12);
        Ok(())
    }

    #[test]
    fn bad_sizes_and_intervals_are_refused() {
        for n in [0, 129] {
            assert!(gauss_hermite(n)
                .unwrap_err()
                .to_string()
                .contains("invalid n"));
        }
        assert!(gauss_legendre(101, 0.0, 1.0)
            .unwrap_err()
            .to_string()
            .contains("invalid n"));
        for (a, b) in [
            (1.0, 1.0),
            (2.0, 1.0),
            (f64::NAN, 1.0),
            (0.0, f64::INFINITY),
        ] {
            let e = gauss_legendre(4, a, b).unwrap_err().to_string();
            assert!(e.contains("interval"), "{e}");
        }
    }
}
