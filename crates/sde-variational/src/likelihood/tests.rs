//! Tests of the likelihoods against closed forms, `libm::erfc`, asymptotic tail forms, finite
//! differences and fine trapezoid integrals.

use std::f64::consts::{FRAC_1_SQRT_2, PI};

use candle_core::{DType, Device, Tensor, Var};

use super::*;
use crate::process::GaussianMarginal;

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn col(values: &[f64]) -> Tensor {
    Tensor::from_slice(values, (values.len(), 1), &Device::Cpu).expect("host tensor")
}

fn host1(t: &Tensor) -> Vec<f64> {
    host::<f64>(t).expect("host values")
}

/// `Φ(z)` straight from `erfc`.
fn ndtr(z: f64) -> f64 {
    0.5 * libm::erfc(-z * FRAC_1_SQRT_2)
}

/// The 8-bit likelihood with width `delta` as a `(rows, 1)` tensor.
fn eight_bit(deltas: &[f64]) -> DiscretisedGaussian {
    DiscretisedGaussian::eight_bit(col(deltas)).expect("valid likelihood")
}

#[test]
fn log_ndtr_matches_erfc_and_its_asymptotic_series() {
    // Where Φ(z) is a normal double, log of erfc's value is correct to rounding: relative
    // 1e-15 of |log Φ| (a few ulps; erfc is accurate to < 1 ulp).
    for i in -3700..=800 {
        let z = i as f64 * 0.01;
        let (got, reference) = (log_ndtr(z), ndtr(z).ln());
        // Plus 2e-16 absolute: the reference's rounding of Φ near 1 (ours uses log1p there).
        assert!(
            (got - reference).abs() <= 1e-15 * reference.abs() + 2e-16,
            "z = {z}: {got} vs {reference}"
        );
    }
    // Upper tail: log Φ(z) = log1p(−Φ(−z)) ≈ −Φ(−z), relative accuracy where log(Φ) rounds to 0.
    for z in [9.0, 20.0, 37.0] {
        let got = log_ndtr(z);
        assert!((got / -ndtr(-z) - 1.0).abs() < 1e-14, "z = {z}: {got}");
    }
    // Below erfc's underflow: finite, and equal to the asymptotic form
    // log φ(z) − log(−z) + log S(z), log S = −u + 5u²/2 − 37u³/3 + O(u⁴), u = 1/z² (the next
    // term, ~88u⁴ ≈ 1e-14 at z = −100, is below the tolerance 1e-15 |log Φ| ≥ 5e-12).
    for z in [-100.0, -1e4, -5e4, -1e8] {
        let got = log_ndtr(z);
        let u = 1.0 / (z * z);
        let leading =
            -0.5 * z * z - 0.5 * LN_2PI - (-z).ln() - u + 2.5 * u * u - 37.0 / 3.0 * u * u * u;
        assert!(got.is_finite());
        assert!((got - leading).abs() < 1e-15 * leading.abs(), "z = {z}");
    }
    assert_eq!(log_ndtr(f64::NEG_INFINITY), f64::NEG_INFINITY);
    assert_eq!(log_ndtr(f64::INFINITY), 0.0);
    assert!(log_ndtr(f64::NAN).is_nan());
}

/// `Φ(b) − Φ(a)` from `erfc`, with its rounding error bound: differences are taken in the
/// tail where both terms are small (upper tail reflected), so the bound is a few ulps of
/// the terms.
fn interval_reference(a: f64, b: f64) -> (f64, f64) {
    let (ta, tb) = if a >= 0.0 {
        (ndtr(-b), ndtr(-a))
    } else {
        (ndtr(a), ndtr(b))
    };
    let p = tb - ta;
    (p, 4.0 * f64::EPSILON * (ta + tb))
}

#[test]
fn ordinal_probabilities_sum_to_one_and_match_erfc() -> TestResult {
    let xs = [
        -50.0,
        -3.0,
        -1.0,
        -0.999,
        -0.5,
        -1.0 / 255.0,
        0.0,
        0.3,
        0.9961,
        1.0,
        1.2,
        7.0,
        50.0,
    ];
    let deltas = [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0];
    // Every (x, δ, k) as one row: y the centre of k, δ per row.
    let mut rows = (Vec::new(), Vec::new(), Vec::new());
    for &x in &xs {
        for &d in &deltas {
            for k in 0..256 {
                rows.0.push(2.0 * k as f64 / 255.0 - 1.0);
                rows.1.push(x);
                rows.2.push(d);
            }
        }
    }
    let lik = eight_bit(&rows.2);
    let log_p = host1(&lik.log_prob(&col(&rows.0), &col(&rows.1))?);
    for (i, chunk) in log_p.chunks_exact(256).enumerate() {
        let (x, d) = (rows.1[i * 256], rows.2[i * 256]);
        assert!(
            chunk.iter().all(|v| v.is_finite() && *v <= 0.0),
            "x = {x}, δ = {d}"
        );
        // 256 probabilities, each to a few ulps relative: the sum to 1e-12 (in practice ~1e-15).
        let total: f64 = chunk.iter().map(|v| v.exp()).sum();
        assert!(
            (total - 1.0).abs() < 1e-12,
            "x = {x}, δ = {d}: Σ P = {total}"
        );
        for (k, &lp) in chunk.iter().enumerate() {
            let (l, u) = lik.edges(k);
            let (a, b) = ((l - x) / d, (u - x) / d);
            let (reference, bound) = interval_reference(a, b);
            // Where the reference is a normal double, the two agree to the reference's rounding
            // plus that of exp(log P), a relative ε |log P| (up to 1.5e-13 at P ~ 1e-300).
            if reference > 1e-300 {
                let p = lp.exp();
                assert!(
                    (p - reference).abs()
                        <= bound + 4.0 * f64::EPSILON * (1.0 + lp.abs()) * reference,
                    "x = {x}, δ = {d}, k = {k}: {p} vs {reference}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn far_tail_log_probabilities_are_finite_and_match_the_asymptotic_form() -> TestResult {
    // x = ±50, δ = 10⁻³: every bin but one outer bin is ~5·10⁴ standard deviations away.
    let d = 1e-3;
    let lik = eight_bit(&[d]);
    // log Φ(z) ≈ log φ(z) − log(−z) − 1/z² for z ≪ 0 (next term 5/(2 z⁴) ~ 1e-19, far below
    // the relative rounding 1e-15 of a 1e9-sized value).
    let tail = |z: f64| -0.5 * z * z - 0.5 * LN_2PI - (-z).ln() - 1.0 / (z * z);
    for x in [-50.0, 50.0] {
        for k in [0usize, 1, 127, 128, 254, 255] {
            let y = lik.centre(k)?;
            let lp = host1(&lik.log_prob(&col(&[y]), &col(&[x]))?)[0];
            let (l, u) = lik.edges(k);
            let (a, b) = ((l - x) / d, (u - x) / d);
            // The far edge's mass is negligible (its log is smaller by ≥ 3·10⁶), so log P is the
            // near edge's log tail mass — or 0 for the outer bin containing x.
            // x = 50: both edges ≪ 0, P ≈ Φ(b); x = −50: both ≫ 0, P = Φ(−a) − Φ(−b) ≈ Φ(−a).
            let expected = match (x > 0.0, k) {
                (true, 255) | (false, 0) => 0.0,
                (true, _) => tail(b),
                (false, _) => tail(-a),
            };
            assert!(lp.is_finite(), "x = {x}, k = {k}");
            assert!(
                (lp - expected).abs() <= 1e-14 * expected.abs() + 1e-300,
                "x = {x}, k = {k}: {lp} vs {expected}"
            );
        }
    }
    Ok(())
}

/// Central differences of `f` at `v`, step `h`.
fn central(f: impl Fn(f64) -> f64, v: f64, h: f64) -> f64 {
    (f(v + h) - f(v - h)) / (2.0 * h)
}

#[test]
fn backward_matches_finite_differences() -> TestResult {
    // (k, x, δ): middle and outer bins, x inside and outside, narrow (δ = 10) and wide (δ = 10⁻³)
    // intervals in δ units, moderate and far tails.
    let cases: [(usize, f64, f64); 12] = [
        (128, 0.0, 0.01),
        (128, 0.003, 0.004),
        (100, 0.5, 0.2),
        (0, -0.9, 0.05),
        (0, 0.2, 0.1),
        (255, 0.9, 0.05),
        (255, -0.3, 0.1),
        (37, 0.4, 10.0),
        (200, -0.2, 1.0),
        (10, 0.9, 0.03),
        (250, -1.0, 0.04),
        (128, 3.0, 1e-3),
    ];
    let ys: Vec<f64> = cases
        .iter()
        .map(|c| 2.0 * c.0 as f64 / 255.0 - 1.0)
        .collect();
    let x0: Vec<f64> = cases.iter().map(|c| c.1).collect();
    let d0: Vec<f64> = cases.iter().map(|c| c.2).collect();
    let x = Var::from_tensor(&col(&x0))?;
    let delta = Var::from_tensor(&col(&d0))?;
    let lik = DiscretisedGaussian::eight_bit(delta.as_tensor().clone())?;
    let lp = lik.log_prob(&col(&ys), x.as_tensor())?;
    let grads = lp.sum_all()?.backward()?;
    let gx = host1(grads.get(&x).ok_or("no gradient for x")?);
    let gd = host1(grads.get(&delta).ok_or("no gradient for δ")?);
    for (i, &(k, x, d)) in cases.iter().enumerate() {
        let single = |x: f64, d: f64| {
            let lik = eight_bit(&[d]);
            let (l, u) = lik.edges(k);
            log_normal_interval((l - x) / d, (u - x) / d)
        };
        // Steps 1e-6 of the scale δ: truncation ~(h/δ)² = 1e-12 relative to the scale of L's
        // curvature, rounding ε |L| δ/h ~ 1e-10 |L|; the tolerance 1e-6 relative (plus 1e-6
        // absolute) covers both with a wide margin for the far-tail case (|L| ~ 5e6).
        let fx = central(|v| single(v, d), x, 1e-6 * d);
        let fd = central(|v| single(x, v), d, 1e-6 * d);
        assert!(
            (gx[i] - fx).abs() <= 1e-6 * fx.abs() + 1e-6,
            "case {i}: ∂/∂x {} vs {fx}",
            gx[i]
        );
        assert!(
            (gd[i] - fd).abs() <= 1e-6 * fd.abs() + 1e-6,
            "case {i}: ∂/∂δ {} vs {fd}",
            gd[i]
        );
    }
    // A shared (1, 1) width collects every row's derivative.
    let shared = Var::from_tensor(&col(&[0.05]))?;
    let lik = DiscretisedGaussian::eight_bit(shared.as_tensor().clone())?;
    let lp = lik.log_prob(&col(&ys), &col(&x0))?;
    let g = host1(
        lp.sum_all()?
            .backward()?
            .get(&shared)
            .ok_or("no gradient")?,
    )[0];
    let total = |d: f64| {
        let lik = eight_bit(&[d]);
        host1(&lik.log_prob(&col(&ys), &col(&x0)).expect("log_prob"))
            .iter()
            .sum::<f64>()
    };
    let fd = central(total, 0.05, 1e-7);
    assert!((g - fd).abs() <= 1e-6 * fd.abs(), "shared δ: {g} vs {fd}");
    Ok(())
}

#[test]
fn narrow_and_far_tail_gradients_are_stable() {
    // δ = 10 on 8-bit bins: the interval is 7.8e-4 standard deviations wide and r_a ≈ r_b ≈ 1280;
    // the sum r_b − r_a → −(mid-point) must come out without cancellation: compare with the
    // exact limit for a symmetric interval around z = 0 (0) and the mean-value form elsewhere.
    let (s, w) = log_normal_interval_grad(-3.9e-4, 3.9e-4);
    assert!(s.abs() < 1e-15 && (w - 1.0).abs() < 1e-6, "({s}, {w})");
    // For a narrow interval [m − ε, m + ε]: ∂L/∂a + ∂L/∂b = −m + O(ε²) … to a relative 1e-6.
    for m in [-30.0, -2.0, 0.7, 5.0, 40.0] {
        let (s, _) = log_normal_interval_grad(m - 1e-4, m + 1e-4);
        assert!((s + m).abs() < 1e-6 * m.abs(), "m = {m}: {s}");
    }
    // Very far tails: finite; for a half-line (−∞, b] with b ≪ 0, ∂L/∂b = φ(b)/Φ(b) ≈ −b.
    for b in [-50.0, -5e4, -1e8] {
        let (s, w) = log_normal_interval_grad(f64::NEG_INFINITY, b);
        assert!(s.is_finite() && w.is_finite());
        // φ(b)/Φ(b) = −b (1 + 1/b² + O(b⁻⁴)): within 2/b² plus the rounding of exp(log r),
        // a relative ε |log r| = ε log(−b).
        assert!(
            (s / -b - 1.0).abs() < 2.0 / (b * b) + 4.0 * f64::EPSILON * (1.0 + (-b).ln()),
            "b = {b}: {s}"
        );
    }
}

#[test]
fn f32_agrees_with_f64() -> TestResult {
    let ys = [-1.0, -51.0 / 255.0, 1.0 / 255.0, 65.0 / 255.0, 1.0];
    let xs = [-1.1, -0.21, 0.002, 0.5, 0.9];
    let lik64 = eight_bit(&[0.02]);
    let delta32 = Var::from_tensor(&col(&[0.02]).to_dtype(DType::F32)?)?;
    let lik32 = DiscretisedGaussian::eight_bit(delta32.as_tensor().clone())?;
    let x32 = Var::from_tensor(&col(&xs).to_dtype(DType::F32)?)?;
    let y32 = col(&ys).to_dtype(DType::F32)?;
    let std = col(&[0.01; 5]);
    let e64 = host1(&lik64.expected_log_prob(&col(&ys), &col(&xs), &std)?);
    let lp64 = host1(&lik64.log_prob(&col(&ys), &col(&xs))?);
    let lp32 = lik32.log_prob(&y32, x32.as_tensor())?;
    let e32 = lik32.expected_log_prob(&y32, x32.as_tensor(), &std.to_dtype(DType::F32)?)?;
    assert_eq!((lp32.dtype(), e32.dtype()), (DType::F32, DType::F32));
    // f32 inputs and outputs: relative 1e-5 covers the rounding of x, δ and y to f32
    // (|∂L/∂x| δ ~ 50 here, times 6e-8) and of the result.
    for (a, b) in host1(&lp32)
        .iter()
        .zip(&lp64)
        .chain(host1(&e32).iter().zip(&e64))
    {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
    }
    let grads = (lp32.sum_all()? + e32.sum_all()?)?.backward()?;
    for var in [&x32, &delta32] {
        let g = grads.get(var).ok_or("no gradient")?;
        assert_eq!(g.dtype(), DType::F32);
        assert!(host1(g).iter().all(|v| v.is_finite() && *v != 0.0));
    }
    Ok(())
}

#[test]
fn gaussian_expectation_is_the_average_of_log_prob() -> TestResult {
    let ys = [0.3, -1.2, 2.0];
    let means = [0.1, -1.0, 2.5];
    let stds = [0.2, 0.0, 1.5];
    let delta = Var::from_tensor(&col(&[0.7]))?;
    let lik = GaussianLikelihood::new(delta.as_tensor().clone())?;
    let mean = Var::from_tensor(&col(&means))?;
    let std = Var::from_tensor(&col(&stds))?;
    let e = lik.expected_log_prob(&col(&ys), mean.as_tensor(), std.as_tensor())?;
    // log_prob is quadratic in x: the 3-point Gauss–Hermite rule is exact (rounding ~1e-15).
    let rule = sde_core::quadrature::gauss_hermite(3)?;
    let (nodes, weights) = (rule.nodes, rule.weights);
    let ev = host1(&e);
    for i in 0..3 {
        let mut avg = 0.0;
        for (z, w) in nodes.iter().zip(&weights) {
            let x = col(&[means[i] + stds[i] * z]);
            avg += w * host1(&lik.log_prob(&col(&[ys[i]]), &x)?)[0];
        }
        assert!((ev[i] - avg).abs() < 1e-13, "row {i}: {} vs {avg}", ev[i]);
        // And the density itself: log N(y; μ, δ²) at s = 0.
        let direct = -0.5 * ((ys[i] - means[i]).powi(2) / 0.49 + (2.0 * PI * 0.49).ln());
        if stds[i] == 0.0 {
            assert!((ev[i] - direct).abs() < 1e-14);
        }
    }
    // Gradients: ∂/∂μ = (y − μ)/δ², ∂/∂s = −s/δ², ∂/∂δ = Σ [((y − μ)² + s²)/δ³ − 1/δ].
    let grads = e.sum_all()?.backward()?;
    let gm = host1(grads.get(&mean).ok_or("no gradient")?);
    let gs = host1(grads.get(&std).ok_or("no gradient")?);
    let gd = host1(grads.get(&delta).ok_or("no gradient")?)[0];
    let mut expected_gd = 0.0;
    for i in 0..3 {
        assert!((gm[i] - (ys[i] - means[i]) / 0.49).abs() < 1e-14);
        assert!((gs[i] + stds[i] / 0.49).abs() < 1e-14);
        expected_gd += ((ys[i] - means[i]).powi(2) + stds[i].powi(2)) / 0.343 - 1.0 / 0.7;
    }
    assert!((gd - expected_gd).abs() < 1e-13, "{gd} vs {expected_gd}");
    // GaussianMarginal's closed form is the same formula.
    let q = GaussianMarginal {
        alpha: col(&means),
        beta: col(&stds),
        dalpha_dt: None,
        dbeta_dt: None,
    };
    let wrapped = host1(&q.expected_gaussian_log_likelihood(&col(&ys), &col(&[0.7]))?);
    assert_eq!(wrapped, ev);
    Ok(())
}

/// `E_{x ~ N(μ, s²)}[log P(k | x)]` by the trapezoid rule over `μ ± 12 s` with 48001 points
/// (step s/2000: the integrand in ε bends on the scale δ/s ≥ 0.1 here, so the error is far
/// below 1e-12; the tails beyond 12 s hold < 1e-32 of the mass).
fn trapezoid_expectation(lik: &DiscretisedGaussian, k: usize, mean: f64, std: f64, d: f64) -> f64 {
    let (l, u) = lik.edges(k);
    let n = 48_000;
    let h = 24.0 / n as f64;
    (0..=n)
        .map(|i| {
            let e = -12.0 + i as f64 * h;
            let x = mean + std * e;
            let w = if i == 0 || i == n { 0.5 } else { 1.0 };
            w * h
                * (-0.5 * e * e - 0.5 * LN_2PI).exp()
                * log_normal_interval((l - x) / d, (u - x) / d)
        })
        .sum()
}

#[test]
fn discretised_expectation_matches_a_fine_trapezoid_rule() -> TestResult {
    // (k, μ, s, δ, tolerance relative to |E log P|): s ≤ δ is smooth on the rule's scale; s = 10 δ
    // with δ below the bin half-width 1/255 is the hard case (see DEFAULT_NODES).
    let cases: [(usize, f64, f64, f64, f64); 8] = [
        (128, 0.0, 0.005, 0.01, 1e-12),
        (128, 0.01, 0.01, 0.01, 1e-12),
        (0, -0.95, 0.05, 0.1, 1e-12),
        (255, 0.7, 0.1, 0.2, 1e-12),
        (40, -0.5, 0.02, 0.02, 1e-12),
        (200, 0.6, 0.3, 1.0, 1e-12),
        (128, 0.0, 0.03, 0.003, 1e-3),
        (100, -0.1, 0.01, 0.001, 1e-3),
    ];
    for (i, &(k, mean, std, d, tol)) in cases.iter().enumerate() {
        let lik = eight_bit(&[d]);
        let y = lik.centre(k)?;
        let got = host1(&lik.expected_log_prob(&col(&[y]), &col(&[mean]), &col(&[std]))?)[0];
        let reference = trapezoid_expectation(&lik, k, mean, std, d);
        assert!(
            (got - reference).abs() <= tol * reference.abs(),
            "case {i}: {got} vs {reference} (relative {:.1e})",
            ((got - reference) / reference).abs()
        );
    }
    // The expectation back-propagates to μ and s: compare with central differences of itself.
    let (k, mean0, std0) = (90, -0.3, 0.02);
    let lik = eight_bit(&[0.03]);
    let y = col(&[lik.centre(k)?]);
    let (mean, std) = (
        Var::from_tensor(&col(&[mean0]))?,
        Var::from_tensor(&col(&[std0]))?,
    );
    let e = lik.expected_log_prob(&y, mean.as_tensor(), std.as_tensor())?;
    let grads = e.sum_all()?.backward()?;
    let eval = |m: f64, s: f64| {
        host1(
            &lik.expected_log_prob(&y, &col(&[m]), &col(&[s]))
                .expect("expectation"),
        )[0]
    };
    let gm = host1(grads.get(&mean).ok_or("no gradient")?)[0];
    let gs = host1(grads.get(&std).ok_or("no gradient")?)[0];
    // Steps 1e-6: truncation (1e-6/0.02)² ~ 3e-9 relative, rounding 1e-16 · 2/1e-6 ~ 2e-10.
    let fm = central(|m| eval(m, std0), mean0, 1e-6);
    let fs = central(|s| eval(mean0, s), std0, 1e-6);
    assert!((gm - fm).abs() < 1e-6 * fm.abs(), "∂/∂μ {gm} vs {fm}");
    assert!((gs - fs).abs() < 1e-6 * fs.abs(), "∂/∂s {gs} vs {fs}");
    Ok(())
}

#[test]
fn bins_round_trip_and_off_grid_values_are_named() -> TestResult {
    let lik = eight_bit(&[0.1]);
    for k in 0..256 {
        assert_eq!(lik.bin(lik.centre(k)?)?, k);
        // f32 data: rounding to f32 moves a centre by < 6e-8, far within the tolerance.
        assert_eq!(lik.bin(lik.centre(k)? as f32 as f64)?, k);
    }
    for (y, what) in [
        (0.5 / 255.0, "between centres"),
        (1.01, "above hi"),
        (-1.5, "below lo"),
        (f64::NAN, "NaN"),
    ] {
        let e = lik.bin(y).expect_err(what).to_string();
        assert!(e.starts_with("invalid y"), "{what}: {e}");
    }
    let e = lik.centre(256).expect_err("k = K").to_string();
    assert!(e.contains("invalid k: 256"), "{e}");
    // A general grid: K = 5 on [0, 4] has centres 0, 1, …, 4.
    let five = DiscretisedGaussian::new(5, 0.0, 4.0, col(&[1.0]))?;
    assert_eq!(five.bin(3.0)?, 3);
    assert_eq!(five.edges(3), (2.5, 3.5));
    assert_eq!(five.edges(0).0, f64::NEG_INFINITY);
    assert_eq!(five.edges(4).1, f64::INFINITY);
    Ok(())
}

#[test]
fn bad_inputs_give_named_errors() -> TestResult {
    let expect = |r: Result<Tensor>, needle: &str| {
        let e = r.expect_err(needle).to_string();
        assert!(e.contains(needle), "expected {needle:?} in {e:?}");
    };
    let y = col(&[-1.0, 1.0]);
    let x = col(&[0.1, 0.2]);
    let std = col(&[0.1, 0.1]);
    // Constructors.
    for (r, needle) in [
        (
            DiscretisedGaussian::new(1, -1.0, 1.0, col(&[1.0])).err(),
            "invalid n_bins: 1",
        ),
        (
            DiscretisedGaussian::new(4, 1.0, 1.0, col(&[1.0])).err(),
            "invalid hi: 1 with lo = 1",
        ),
        (
            DiscretisedGaussian::new(4, 2.0, 1.0, col(&[1.0])).err(),
            "invalid hi",
        ),
        (
            DiscretisedGaussian::new(4, f64::NAN, 1.0, col(&[1.0])).err(),
            "invalid lo: NaN",
        ),
        (
            DiscretisedGaussian::new(4, -1.0, f64::INFINITY, col(&[1.0])).err(),
            "invalid hi: inf",
        ),
        (
            DiscretisedGaussian::new(4, -1e308, 1e308, col(&[1.0])).err(),
            "invalid n_bins",
        ),
        (
            DiscretisedGaussian::eight_bit(Tensor::new(&[1.0f64], &Device::Cpu)?).err(),
            "invalid delta: shape [1]",
        ),
        (
            GaussianLikelihood::new(Tensor::new(&[[1u32]], &Device::Cpu)?).err(),
            "invalid delta: dtype U32",
        ),
        (
            DiscretisedGaussian::eight_bit(col(&[1.0]))
                .and_then(|l| l.with_quadrature_nodes(0))
                .err(),
            "invalid n: 0",
        ),
    ] {
        let e = r.expect("an error").to_string();
        assert!(e.contains(needle), "expected {needle:?} in {e:?}");
    }
    let disc = |d: &[f64]| eight_bit(d);
    let gauss = |d: &[f64]| GaussianLikelihood::new(col(d)).expect("valid");
    // Widths: a non-positive or NaN row, a wrong number of rows, a dtype unlike the data's.
    expect(
        disc(&[0.1, -0.2]).log_prob(&y, &x),
        "invalid delta: -0.2 in row 1",
    );
    expect(gauss(&[0.0]).log_prob(&y, &x), "invalid delta: 0 in row 0");
    expect(
        gauss(&[f64::NAN]).expected_log_prob(&y, &x, &std),
        "invalid delta: NaN in row 0",
    );
    expect(
        disc(&[0.1, 0.1, 0.1]).log_prob(&y, &x),
        "invalid delta: shape [3, 1] for a batch of 2",
    );
    expect(
        GaussianLikelihood::new(col(&[1.0]).to_dtype(DType::F32)?)?.log_prob(&y, &x),
        "invalid delta: dtype F32 with data of dtype F64",
    );
    for lik in [&disc(&[0.1]) as &dyn Likelihood, &gauss(&[0.1])] {
        // Shapes and values of the data, the points and the moments.
        expect(
            lik.log_prob(&Tensor::new(&[0.0f64, 1.0], &Device::Cpu)?, &x),
            "invalid y: shape [2]",
        );
        expect(
            lik.log_prob(&y, &col(&[0.1])),
            "invalid x: shape [1, 1] for a batch of 2",
        );
        expect(
            lik.log_prob(&y, &col(&[0.1, f64::NAN])),
            "invalid x: NaN in row 1",
        );
        expect(
            lik.log_prob(&col(&[1.0, f64::INFINITY]), &x),
            "invalid y: inf in row 1",
        );
        expect(
            lik.log_prob(&y, &x.to_dtype(DType::F32)?),
            "invalid x: dtype F32",
        );
        expect(
            lik.expected_log_prob(&y, &x, &col(&[0.1, -0.1])),
            "invalid std: -0.1 in row 1",
        );
        expect(
            lik.expected_log_prob(&y, &col(&[f64::NAN, 0.0]), &std),
            "invalid mean: NaN in row 0",
        );
        expect(
            lik.expected_log_prob(&y, &x, &col(&[0.1])),
            "invalid std: shape [1, 1]",
        );
        expect(
            lik.log_prob(&Tensor::new(&[[0i64]], &Device::Cpu)?, &x),
            "invalid y: dtype I64",
        );
    }
    // Off-grid data for the discretised Gaussian names the value and row.
    expect(
        disc(&[0.1]).log_prob(&col(&[1.0, 0.5]), &x),
        "invalid y: 0.5 in row 1",
    );
    expect(
        disc(&[0.1]).expected_log_prob(&col(&[2.0, 1.0]), &x, &std),
        "invalid y: 2 in row 0",
    );
    Ok(())
}
