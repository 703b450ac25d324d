//! Gaussian quadrature rules in `f64`: Gauss–Hermite for expectations over a standard normal
//! and Gauss–Legendre on an interval.
//!
//! The one-dimensional models of this workspace take expectations over `ε ~ N(0, 1)` (the
//! variational marginals are flows of a standard normal) and integrals over `t ∈ [0, 1]`; an
//! `n`-point Gauss rule is exact for polynomials of degree `2n − 1`, so a few dozen nodes give
//! deterministic, differentiable estimates where Monte-Carlo would need thousands of draws.
//!
//! The nodes are the roots of the orthogonal polynomial, found by a sign-change scan and
//! bisection to the last bit; the weights come from the standard closed forms. Computing a rule
//! costs about `40,000 n` polynomial steps (a millisecond for `n = 32`): compute it once and keep
//! it.
//!
//! ```
//! use sde_core::quadrature::gauss_hermite;
//! # fn main() -> sde_core::Result<()> {
//! let rule = gauss_hermite(10)?;
//! // E[ε⁴] = 3 for ε ~ N(0, 1), exactly up to rounding.
//! assert!((rule.expect(|e| e.powi(4)) - 3.0).abs() < 1e-12);
//! # Ok(()) }
//! ```

use crate::error::{Error, Result};

/// The most nodes a rule may have: beyond it `n!` and the polynomials' values leave `f64`'s
/// range in the weight formulas.
pub const MAX_NODES: usize = 100;

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

fn check_n(n: usize) -> Result<()> {
    if n == 0 || n > MAX_NODES {
        return Err(Error::invalid(
            "n",
            n,
            "a Gauss rule needs between 1 and 100 nodes",
        ));
    }
    Ok(())
}

/// `(p_n(x), p_{n−1}(x))` of the three-term recurrence `p_{k+1} = next(k, x, p_k, p_{k−1})`
/// from `p_0 = 1`, `p_{−1} = 0`.
fn recurrence(n: usize, x: f64, next: impl Fn(usize, f64, f64, f64) -> f64) -> (f64, f64) {
    let (mut prev, mut cur) = (0.0, 1.0);
    for k in 0..n {
        let nxt = next(k, x, cur, prev);
        prev = cur;
        cur = nxt;
    }
    (cur, prev)
}

/// The roots of `p` in `(lo, hi)`: a scan of `scan` intervals, each sign change bisected to the
/// last bit. The caller chooses `scan` so that roots are further apart than one interval.
fn roots(lo: f64, hi: f64, scan: usize, p: impl Fn(f64) -> f64) -> Vec<f64> {
    let mut out = Vec::new();
    let step = (hi - lo) / scan as f64;
    for i in 0..scan {
        let (mut a, mut b) = (lo + i as f64 * step, lo + (i + 1) as f64 * step);
        let (mut fa, fb) = (p(a), p(b));
        if fa == 0.0 {
            out.push(a);
            continue;
        }
        // A root on the right end is counted by the next interval, as its left end.
        if fa * fb > 0.0 || fb == 0.0 {
            continue;
        }
        while {
            let m = 0.5 * (a + b);
            m > a && m < b
        } {
            let m = 0.5 * (a + b);
            let fm = p(m);
            if fm * fa > 0.0 {
                a = m;
                fa = fm;
            } else {
                b = m;
            }
        }
        out.push(0.5 * (a + b));
    }
    out
}

fn found(n: usize, nodes: &[f64], rule: &'static str) -> Result<()> {
    if nodes.len() != n {
        return Err(Error::invalid(
            "n",
            format!("{n} ({rule}: the root scan found {})", nodes.len()),
            "the scan did not separate the roots; this is a bug",
        ));
    }
    Ok(())
}

/// The `n`-point Gauss–Hermite rule for `E[g(ε)]`, `ε ~ N(0, 1)` (probabilists' polynomials
/// `He_{k+1} = x He_k − k He_{k−1}`, weights `n! / (n² He_{n−1}(x_i)²)`, summing to 1); exact
/// for polynomials of degree `2n − 1`.
///
/// # Errors
/// `n` outside `1..=100`.
pub fn gauss_hermite(n: usize) -> Result<Rule> {
    check_n(n)?;
    let hermite = |x: f64| recurrence(n, x, |k, x, p, q| x * p - k as f64 * q);
    // The roots of He_n lie within ±√(4n + 2) ≤ ±(2√n + 1) and are at least ~1/√n apart, far
    // more than the scan's step.
    let bound = 2.0 * (n as f64).sqrt() + 1.0;
    let nodes = roots(-bound, bound, 40_000, |x| hermite(x).0);
    found(n, &nodes, "Gauss–Hermite")?;
    // n! / (n² He_{n−1}²) = (n − 1)!/n / He_{n−1}², the factorial accumulated as a ratio to
    // stay in range.
    let weights = nodes
        .iter()
        .map(|&x| {
            let q = hermite(x).1;
            let mut w = 1.0 / n as f64;
            let mut q2 = q * q;
            for k in 1..n {
                // Divide by k alongside, keeping both factors moderate.
                w *= k as f64;
                if w > 1e150 {
                    w /= 1e150;
                    q2 /= 1e150;
                }
            }
            w / q2
        })
        .collect();
    Ok(Rule { nodes, weights })
}

/// The `n`-point Gauss–Legendre rule on `[a, b]` (exact for polynomials of degree `2n − 1`).
///
/// # Errors
/// `n` outside `1..=100`; `a`, `b` not finite or `a ≥ b`.
pub fn gauss_legendre(n: usize, a: f64, b: f64) -> Result<Rule> {
    check_n(n)?;
    if !(a.is_finite() && b.is_finite() && a < b) {
        return Err(Error::invalid(
            "interval",
            format!("[{a}, {b}]"),
            "must be finite with a < b",
        ));
    }
    // (k + 1) P_{k+1} = (2k + 1) x P_k − k P_{k−1}.
    let legendre = |x: f64| {
        recurrence(n, x, |k, x, p, q| {
            ((2 * k + 1) as f64 * x * p - k as f64 * q) / (k + 1) as f64
        })
    };
    // The outermost roots of P_n are ~2.4/n² apart (1.5e-4 for n = 100): a 1e-5 scan separates
    // them.
    let xs = roots(-1.0, 1.0, 200_000.max(40 * n * n), |x| legendre(x).0);
    found(n, &xs, "Gauss–Legendre")?;
    let half = 0.5 * (b - a);
    let mut nodes = Vec::with_capacity(n);
    let mut weights = Vec::with_capacity(n);
    for x in xs {
        let (p, q) = legendre(x);
        let dp = n as f64 * (x * p - q) / (x * x - 1.0);
        nodes.push(a + half * (x + 1.0));
        weights.push(half * 2.0 / ((1.0 - x * x) * dp * dp));
    }
    Ok(Rule { nodes, weights })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_point_hermite_rule_is_the_closed_form() -> Result<()> {
        // Nodes −√3, 0, √3 with weights 1/6, 2/3, 1/6.
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
        Ok(())
    }

    #[test]
    fn the_rules_integrate_polynomials_exactly() -> Result<()> {
        // Moments of N(0, 1) and of U(0, 1), exact for these degrees: what remains is rounding.
        for n in [20, 64, 100] {
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
        for n in [0, 101] {
            assert!(gauss_hermite(n).unwrap_err().to_string().contains("n"));
        }
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
