//! Cross-crate tests of the public API against exact answers. The tests live in `tests/`;
//! this library holds the small statistical helpers they share.

/// Sample mean and (unbiased) variance.
pub fn mean_var(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let v = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0);
    (m, v)
}

/// The Kolmogorov–Smirnov statistic `sup |F_n − F|` of a sample against a CDF.
pub fn ks_statistic(xs: &[f64], cdf: impl Fn(f64) -> f64) -> f64 {
    let mut s = xs.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len() as f64;
    s.iter()
        .enumerate()
        .map(|(i, &x)| {
            let f = cdf(x);
            (f - i as f64 / n).abs().max(((i + 1) as f64 / n - f).abs())
        })
        .fold(0.0, f64::max)
}

/// The KS critical value at level α = 0.001 for a sample of size `n` (asymptotic:
/// `√(−ln(α/2)/2) / √n ≈ 1.949/√n`).
pub fn ks_critical_001(n: usize) -> f64 {
    1.949 / (n as f64).sqrt()
}

/// The least-squares slope of `log2(err)` against `log2(h)`: the measured order.
pub fn fitted_order(hs: &[f64], errs: &[f64]) -> f64 {
    let xs: Vec<f64> = hs.iter().map(|h| h.log2()).collect();
    let ys: Vec<f64> = errs.iter().map(|e| e.log2()).collect();
    let n = xs.len() as f64;
    let mx = xs.iter().sum::<f64>() / n;
    let my = ys.iter().sum::<f64>() / n;
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    sxy / sxx
}
