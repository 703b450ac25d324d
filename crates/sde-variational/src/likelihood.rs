//! Likelihoods `p(y | x_1)` behind one small trait (`docs/MATH.md` §5, paper eq. 45–46).
//!
//! A [`Likelihood`] gives `log p(y | x)` per row and the SDE ELBO's reconstruction term
//! `E_{x ~ N(μ, s²)}[log p(y | x)]` for a Gaussian `q_1 = N(μ, s²)`:
//!
//! - [`GaussianLikelihood`]: `N(y; x, δ²)`, with the expectation in closed form
//!   `−½ [((y − μ)² + s²)/δ² + log(2π δ²)]` (the one place this formula is written;
//!   [`GaussianMarginal::expected_gaussian_log_likelihood`](crate::GaussianMarginal::expected_gaussian_log_likelihood)
//!   calls it).
//! - [`DiscretisedGaussian`]: ordinal data in `K` equally spaced bins (8-bit pixels, say),
//!   `P(k | x) = Φ((u_k − x)/δ) − Φ((l_k − x)/δ)` with open outer bins, so that the
//!   probabilities sum to one; the expectation by Gauss–Hermite quadrature
//!   ([`sde_core::quadrature::gauss_hermite`]).
//!
//! Tensors are `(B, 1)`, `f32` or `f64`; the width `δ` is a `(1, 1)` or `(B, 1)` tensor, usually
//! computed from a learned variable (`δ = exp(log δ)`). Both methods back-propagate to `x`,
//! `μ`, `s` and `δ`. candle has no normal CDF with a gradient, so the discretised Gaussian's
//! `log(Φ(b) − Φ(a))` is a custom op, evaluated in `f64` from a tail-stable `log Φ`
//! ([`log_ndtr`], [`log_normal_interval`]) with its exact derivative.

use std::f64::consts::FRAC_1_SQRT_2;

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor, WithDType};

use sde_core::quadrature::gauss_hermite;

use crate::error::{column_rows, Error, Result};
use crate::process::LN_2PI;

/// A likelihood `p(y | x)` for one-dimensional data, row by row.
///
/// All tensors are `(B, 1)` with one dtype (`f32` or `f64`); results are `(B, 1)` and
/// back-propagate to `x`, `mean`, `std` and the likelihood's own parameters.
pub trait Likelihood {
    /// `log p(y | x)` per row.
    ///
    /// # Errors
    /// Shapes other than `(B, 1)`, mixed or non-float dtypes, non-finite values, data the
    /// likelihood does not describe, invalid parameters (a width `δ ≤ 0`, say).
    fn log_prob(&self, y: &Tensor, x: &Tensor) -> Result<Tensor>;

    /// `E_{x ~ N(mean, std²)}[log p(y | x)]` per row — the SDE ELBO's reconstruction term for a
    /// Gaussian `q_1`: in closed form where one exists, otherwise by Gauss–Hermite quadrature.
    ///
    /// # Errors
    /// As [`log_prob`](Likelihood::log_prob); `std` negative.
    fn expected_log_prob(&self, y: &Tensor, mean: &Tensor, std: &Tensor) -> Result<Tensor>;
}

/// The Gaussian likelihood `p(y | x) = N(y; x, δ²)` (eq. 45).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use sde_variational::likelihood::{GaussianLikelihood, Likelihood};
///
/// # fn main() -> sde_variational::Result<()> {
/// let lik = GaussianLikelihood::new(Tensor::new(&[[0.5f64]], &Device::Cpu)?)?;
/// let y = Tensor::new(&[[1.0f64], [0.0]], &Device::Cpu)?;
/// let mean = Tensor::new(&[[1.0f64], [0.5]], &Device::Cpu)?;
/// let std = Tensor::new(&[[0.0f64], [0.1]], &Device::Cpu)?;
/// let e = lik.expected_log_prob(&y, &mean, &std)?.to_vec2::<f64>()?;
/// // std = 0: the log-density at the mean, −½ log(2π · 0.25).
/// assert!((e[0][0] + 0.5 * (2.0 * std::f64::consts::PI * 0.25).ln()).abs() < 1e-12);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct GaussianLikelihood {
    delta: Tensor,
}

impl GaussianLikelihood {
    /// `N(y; x, δ²)` with `delta` `(1, 1)` (shared) or `(B, 1)` (one width per row), `f32` or
    /// `f64`. Its values are checked (finite, positive) at every call, since a learned width
    /// changes between calls.
    ///
    /// # Errors
    /// `delta` not `(n, 1)` or not a float tensor.
    pub fn new(delta: Tensor) -> Result<Self> {
        check_width_tensor(&delta)?;
        Ok(Self { delta })
    }

    /// The width `δ`.
    pub fn delta(&self) -> &Tensor {
        &self.delta
    }
}

impl Likelihood for GaussianLikelihood {
    /// `−½ [(y − x)²/δ² + log(2π δ²)]`.
    fn log_prob(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        let (batch, dtype) = data_column(y)?;
        column("y", y, batch, dtype, Domain::Finite)?;
        column("x", x, batch, dtype, Domain::Finite)?;
        check_width(&self.delta, batch, dtype)?;
        gaussian_log_prob(y, x, &self.delta)
    }

    /// `−½ [((y − μ)² + s²)/δ² + log(2π δ²)]`, exact.
    fn expected_log_prob(&self, y: &Tensor, mean: &Tensor, std: &Tensor) -> Result<Tensor> {
        let (batch, dtype) = data_column(y)?;
        column("y", y, batch, dtype, Domain::Finite)?;
        column("mean", mean, batch, dtype, Domain::Finite)?;
        column("std", std, batch, dtype, Domain::NonNegative)?;
        check_width(&self.delta, batch, dtype)?;
        gaussian_expected_log_prob(y, mean, std, &self.delta)
    }
}

/// `log N(y; x, δ²) = −½ [(y − x)²/δ² + log(2π δ²)]` without checks; `delta` broadcasts.
pub(crate) fn gaussian_log_prob(y: &Tensor, x: &Tensor, delta: &Tensor) -> Result<Tensor> {
    gaussian_log_density((y - x)?.sqr()?, delta)
}

/// `E_{x ~ N(mean, std²)}[log N(y; x, δ²)] = −½ [((y − mean)² + std²)/δ² + log(2π δ²)]` without
/// checks (the callers have checked, or rely on candle's shape errors); `delta` broadcasts.
pub(crate) fn gaussian_expected_log_prob(
    y: &Tensor,
    mean: &Tensor,
    std: &Tensor,
    delta: &Tensor,
) -> Result<Tensor> {
    gaussian_log_density(((y - mean)?.sqr()? + std.sqr()?)?, delta)
}

/// `−½ [sq/δ² + log(2π δ²)]`: the Gaussian log-density for a squared distance `sq` (or its
/// expectation).
fn gaussian_log_density(sq: Tensor, delta: &Tensor) -> Result<Tensor> {
    let d2 = delta.sqr()?;
    let log_norm = d2.log()?.affine(1.0, LN_2PI)?;
    Ok(sq
        .broadcast_div(&d2)?
        .broadcast_add(&log_norm)?
        .affine(-0.5, 0.0)?)
}

/// The discretised Gaussian for ordinal data (eq. 46): `K` bins with centres `y_k` equally
/// spaced on `[lo, hi]` and
///
/// ```text
/// P(k | x) = Φ((u_k − x)/δ) − Φ((l_k − x)/δ),   l_k = y_k − h,  u_k = y_k + h,  h = (hi − lo)/(2(K − 1)),
/// ```
///
/// with `l_0 = −∞` and `u_{K−1} = +∞`, so that the probabilities sum to one. The boundary
/// between bins `k` and `k + 1` is computed once, so neighbouring bins share it exactly. Data
/// are given as bin centres (a value within a thousandth of the spacing of a centre is that
/// centre); 8-bit images are [`DiscretisedGaussian::eight_bit`]: `K = 256` on `[−1, 1]`,
/// `y_k = 2k/255 − 1`, `h = 1/255`.
///
/// `log P` is computed in `f64` by [`log_normal_interval`], finite in the far tails (`x = 50`,
/// `δ = 10⁻³`: `log P ≈ −1.3·10⁹`, not `log 0`), and differentiated exactly. The expectation
/// under `x ~ N(μ, s²)` is Gauss–Hermite quadrature with [`DiscretisedGaussian::DEFAULT_NODES`]
/// nodes (see there for its accuracy).
///
/// Runs on the CPU.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use sde_variational::likelihood::{DiscretisedGaussian, Likelihood};
///
/// # fn main() -> sde_variational::Result<()> {
/// let lik = DiscretisedGaussian::eight_bit(Tensor::new(&[[0.01f64]], &Device::Cpu)?)?;
/// let y = Tensor::new(&[[lik.centre(128)?]], &Device::Cpu)?;
/// let x = Tensor::new(&[[lik.centre(128)?]], &Device::Cpu)?;
/// let p = lik.log_prob(&y, &x)?.exp()?.to_vec2::<f64>()?[0][0];
/// // Φ(h/δ) − Φ(−h/δ) with h/δ = 100/255.
/// assert!((p - 0.305_0).abs() < 1e-3);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct DiscretisedGaussian {
    n_bins: usize,
    lo: f64,
    hi: f64,
    delta: Tensor,
    nodes: Vec<f64>,
    weights: Vec<f64>,
}

/// How far (in units of the bin spacing) a data value may lie from a bin centre.
const GRID_TOLERANCE: f64 = 1e-3;

impl DiscretisedGaussian {
    /// The default number of Gauss–Hermite nodes of
    /// [`expected_log_prob`](Likelihood::expected_log_prob); the rule integrates polynomials of
    /// degree 63 exactly. In `ε` (`x = μ + s ε`) the integrand `log P(k | μ + s ε)` is flat
    /// inside the bin and quadratic outside, with bends of width `δ/s` at the bin edges, so
    /// the error is set by `s/δ`. Worst relative errors against a fine trapezoid rule (8-bit
    /// bins, `δ = 10⁻³` and `10⁻¹`, means inside, at the edge of and outside the bin, outer
    /// bins):
    ///
    /// | `s/δ` | 32 nodes | 64 nodes | 128 nodes |
    /// |---|---|---|---|
    /// | ≤ 1 | 6·10⁻¹² | 3·10⁻¹⁴ | 8·10⁻¹⁴ |
    /// | 2 | 1·10⁻⁶ | 7·10⁻¹⁰ | 9·10⁻¹⁴ |
    /// | 3 | 3·10⁻⁵ | 3·10⁻⁷ | 2·10⁻¹⁰ |
    /// | 5 | 2·10⁻⁴ | 2·10⁻⁵ | 3·10⁻⁷ |
    /// | 10 | 6·10⁻⁴ | 2·10⁻⁴ | 7·10⁻⁶ |
    ///
    /// The SDE ELBO's `q_1` has `s` near `δ` (the SDE experiment ties `β₁ = δ`), where 32
    /// nodes are exact to rounding; for wider `q_1` use
    /// [`with_quadrature_nodes`](Self::with_quadrature_nodes).
    pub const DEFAULT_NODES: usize = 32;

    /// `K = n_bins` bins with centres equally spaced on `[lo, hi]` and width `delta` (`(1, 1)`
    /// or `(B, 1)`, `f32` or `f64`; its values are checked at every call).
    ///
    /// # Errors
    /// `n_bins < 2`, `lo` or `hi` not finite, `lo ≥ hi`, a bin spacing that is not a positive
    /// finite number, `delta` not `(n, 1)` or not a float tensor.
    pub fn new(n_bins: usize, lo: f64, hi: f64, delta: Tensor) -> Result<Self> {
        if n_bins < 2 {
            return Err(Error::invalid("n_bins", n_bins, "must be at least 2"));
        }
        for (name, v) in [("lo", lo), ("hi", hi)] {
            if !v.is_finite() {
                return Err(Error::invalid(name, v, "must be finite"));
            }
        }
        if lo >= hi {
            return Err(Error::invalid(
                "hi",
                format!("{hi} with lo = {lo}"),
                "must be greater than lo",
            ));
        }
        let spacing = (hi - lo) / (n_bins - 1) as f64;
        if !(spacing.is_finite() && spacing > 0.0 && lo + spacing > lo) {
            return Err(Error::invalid(
                "n_bins",
                format!("{n_bins} on [{lo}, {hi}]"),
                "the bin spacing must be a positive finite number distinguishable from lo",
            ));
        }
        check_width_tensor(&delta)?;
        let rule = gauss_hermite(Self::DEFAULT_NODES)?;
        let (nodes, weights) = (rule.nodes, rule.weights);
        Ok(Self {
            n_bins,
            lo,
            hi,
            delta,
            nodes,
            weights,
        })
    }

    /// 8-bit data: `K = 256` bins on `[−1, 1]`, `y_k = 2k/255 − 1`.
    ///
    /// # Errors
    /// As [`new`](Self::new) for `delta`.
    pub fn eight_bit(delta: Tensor) -> Result<Self> {
        Self::new(256, -1.0, 1.0, delta)
    }

    /// The same likelihood with `n` Gauss–Hermite nodes for the expectation.
    ///
    /// # Errors
    /// As [`sde_core::quadrature::gauss_hermite`].
    pub fn with_quadrature_nodes(mut self, n: usize) -> Result<Self> {
        let rule = gauss_hermite(n)?;
        (self.nodes, self.weights) = (rule.nodes, rule.weights);
        Ok(self)
    }

    /// The number of bins `K`.
    pub fn n_bins(&self) -> usize {
        self.n_bins
    }

    /// The width `δ`.
    pub fn delta(&self) -> &Tensor {
        &self.delta
    }

    /// The centre `y_k = lo + (hi − lo) k/(K − 1)`.
    ///
    /// # Errors
    /// `k ≥ K`.
    pub fn centre(&self, k: usize) -> Result<f64> {
        if k >= self.n_bins {
            return Err(Error::invalid(
                "k",
                format!("{k} with {} bins", self.n_bins),
                "must be less than the number of bins",
            ));
        }
        Ok(self.lo + (self.hi - self.lo) * k as f64 / (self.n_bins - 1) as f64)
    }

    /// The bin `k` whose centre is `y` (within a thousandth of the spacing).
    ///
    /// # Errors
    /// `y` not finite, outside `[lo, hi]`, or not at a bin centre.
    pub fn bin(&self, y: f64) -> Result<usize> {
        self.bin_of_row(y, None)
    }

    fn bin_of_row(&self, y: f64, row: Option<usize>) -> Result<usize> {
        let at = |y: f64| match row {
            Some(i) => format!("{y} in row {i}"),
            None => format!("{y}"),
        };
        if !y.is_finite() {
            return Err(Error::invalid("y", at(y), "must be finite"));
        }
        let t = (y - self.lo) / (self.hi - self.lo) * (self.n_bins - 1) as f64;
        let k = t.round();
        if !(-0.5..=(self.n_bins - 1) as f64 + 0.5).contains(&t) || (t - k).abs() > GRID_TOLERANCE {
            return Err(Error::invalid(
                "y",
                at(y),
                "must be a bin centre lo + (hi − lo) k/(K − 1) of the discretised Gaussian",
            ));
        }
        Ok(k as usize)
    }

    /// The boundary between bins `k` and `k + 1`, `lo + (hi − lo)(2k + 1)/(2(K − 1))`.
    fn boundary(&self, k: usize) -> f64 {
        self.lo + (self.hi - self.lo) * (2 * k + 1) as f64 / (2 * (self.n_bins - 1)) as f64
    }

    /// `(l_k, u_k)`, infinite for the outer bins.
    fn edges(&self, k: usize) -> (f64, f64) {
        let lower = if k == 0 {
            f64::NEG_INFINITY
        } else {
            self.boundary(k - 1)
        };
        let upper = if k + 1 == self.n_bins {
            f64::INFINITY
        } else {
            self.boundary(k)
        };
        (lower, upper)
    }

    /// The bins of the data rows.
    fn bins(&self, y: &Tensor) -> Result<(Vec<usize>, DType)> {
        let (batch, dtype) = data_column(y)?;
        let ys = column("y", y, batch, dtype, Domain::Finite)?;
        let bins = ys
            .iter()
            .enumerate()
            .map(|(i, &v)| self.bin_of_row(v, Some(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok((bins, dtype))
    }

    /// `log P(k_i | x_ij)` for `xs` `(B, m)`, row `i` in bin `bins[i]`.
    fn log_prob_grid(&self, bins: &[usize], xs: &Tensor) -> Result<Tensor> {
        if !xs.device().is_cpu() {
            return Err(Error::invalid(
                "x",
                format!("on {:?}", xs.device().location()),
                "the discretised Gaussian runs on the CPU",
            ));
        }
        let (lower, upper) = bins.iter().map(|&k| self.edges(k)).unzip();
        let delta = self.delta.broadcast_as(xs.shape())?.contiguous()?;
        let op = IntervalLogProb {
            lower,
            upper,
            cols: xs.dim(1)?,
        };
        Ok(xs.contiguous()?.apply_op2(&delta, op)?)
    }
}

impl Likelihood for DiscretisedGaussian {
    /// `log P(k | x)` for `y` the centre of bin `k`.
    fn log_prob(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        let (bins, dtype) = self.bins(y)?;
        column("x", x, bins.len(), dtype, Domain::Finite)?;
        check_width(&self.delta, bins.len(), dtype)?;
        self.log_prob_grid(&bins, x)
    }

    /// `Σ_j w_j log P(k | mean + std ε_j)` over the Gauss–Hermite nodes `ε_j` of `N(0, 1)`.
    fn expected_log_prob(&self, y: &Tensor, mean: &Tensor, std: &Tensor) -> Result<Tensor> {
        let (bins, dtype) = self.bins(y)?;
        let batch = bins.len();
        column("mean", mean, batch, dtype, Domain::Finite)?;
        column("std", std, batch, dtype, Domain::NonNegative)?;
        check_width(&self.delta, batch, dtype)?;
        let n = self.nodes.len();
        let device = mean.device();
        let eps = Tensor::from_slice(&self.nodes, (1, n), device)?.to_dtype(dtype)?;
        let w = Tensor::from_slice(&self.weights, (n, 1), device)?.to_dtype(dtype)?;
        let xs = mean.broadcast_add(&std.broadcast_mul(&eps)?)?;
        Ok(self.log_prob_grid(&bins, &xs)?.matmul(&w)?)
    }
}

/// The elementwise `log(Φ((u_i − x)/δ) − Φ((l_i − x)/δ))` on `(B, m)` tensors `x`, `δ`
/// (contiguous, one dtype), with the bin edges `l_i`, `u_i` of row `i`.
struct IntervalLogProb {
    lower: Vec<f64>,
    upper: Vec<f64>,
    cols: usize,
}

impl IntervalLogProb {
    fn edges(&self, index: usize) -> (f64, f64) {
        let row = index / self.cols;
        (self.lower[row], self.upper[row])
    }

    fn forward<T: WithDType>(&self, xs: &[T], ds: &[T]) -> Vec<T> {
        xs.iter()
            .zip(ds)
            .enumerate()
            .map(|(i, (&x, &d))| {
                let (l, u) = self.edges(i);
                let (x, d) = (x.to_f64(), d.to_f64());
                T::from_f64(log_normal_interval((l - x) / d, (u - x) / d))
            })
            .collect()
    }

    /// `(∂/∂x, ∂/∂δ)` of the output times the output gradient, elementwise.
    fn backward<T: WithDType>(&self, xs: &[T], ds: &[T], gs: &[T]) -> (Vec<T>, Vec<T>) {
        xs.iter()
            .zip(ds)
            .zip(gs)
            .enumerate()
            .map(|(i, ((&x, &d), &g))| {
                let (l, u) = self.edges(i);
                let (x, d, g) = (x.to_f64(), d.to_f64(), g.to_f64());
                let (gx, gd) = log_normal_interval_grad((l - x) / d, (u - x) / d);
                // z = (edge − x)/δ: ∂z/∂x = −1/δ, ∂z/∂δ = −z/δ.
                (T::from_f64(-g * gx / d), T::from_f64(-g * gd / d))
            })
            .unzip()
    }
}

/// The contiguous slice of a CPU storage.
fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&T::cpu_storage_as_slice(s)?[a..b]),
        None => candle_core::bail!("discretised_gaussian: inputs must be contiguous"),
    }
}

/// The host values of a tensor as `T`, in row-major order.
fn host<T: WithDType>(t: &Tensor) -> candle_core::Result<Vec<T>> {
    t.detach().flatten_all()?.to_dtype(T::DTYPE)?.to_vec1::<T>()
}

impl CustomOp2 for IntervalLogProb {
    fn name(&self) -> &'static str {
        "discretised_gaussian"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() || l1.shape().elem_count() != self.lower.len() * self.cols {
            candle_core::bail!(
                "discretised_gaussian: shapes {:?}, {:?} for {} rows of {} columns",
                l1.shape(),
                l2.shape(),
                self.lower.len(),
                self.cols
            );
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                f32::to_cpu_storage_owned(self.forward(slice(s1, l1)?, slice(s2, l2)?))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                f64::to_cpu_storage_owned(self.forward(slice(s1, l1)?, slice(s2, l2)?))
            }
            _ => candle_core::bail!("discretised_gaussian: x and δ must be both f32 or both f64"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        ds: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        fn typed<T: WithDType>(
            op: &IntervalLogProb,
            xs: &Tensor,
            ds: &Tensor,
            grad_res: &Tensor,
        ) -> candle_core::Result<(Tensor, Tensor)> {
            let (gx, gd) = op.backward(&host::<T>(xs)?, &host::<T>(ds)?, &host::<T>(grad_res)?);
            Ok((
                Tensor::from_vec(gx, xs.shape(), &Device::Cpu)?,
                Tensor::from_vec(gd, ds.shape(), &Device::Cpu)?,
            ))
        }
        let (gx, gd) = match xs.dtype() {
            DType::F32 => typed::<f32>(self, xs, ds, grad_res)?,
            DType::F64 => typed::<f64>(self, xs, ds, grad_res)?,
            other => candle_core::bail!("discretised_gaussian: unsupported dtype {other:?}"),
        };
        Ok((Some(gx), Some(gd)))
    }
}

/// `log φ(z) = −z²/2 − ½ log 2π`.
fn log_phi(z: f64) -> f64 {
    -0.5 * z * z - 0.5 * LN_2PI
}

/// Below this, `log Φ` uses the asymptotic series.
const SERIES_BELOW: f64 = -20.0;

/// Above this, `Φ(z) ≥ Φ(−37) ≈ 5.7·10⁻³⁰⁰` is a normal double.
const PHI_NORMAL_ABOVE: f64 = -37.0;

/// `S(z) = 1 − 1/z² + 3/z⁴ − … + (−1)^n (2n − 1)!!/z^{2n}` with ten terms, for `z ≤ −20`:
/// `Φ(z) = φ(z) S(z)/(−z)` up to a relative `4·10⁻¹⁹` (the first omitted term at `z = −20`).
fn tail_series(z: f64) -> f64 {
    let r = 1.0 / (z * z);
    let (mut term, mut sum) = (1.0, 1.0);
    for k in 1..=10 {
        term *= -((2 * k - 1) as f64) * r;
        sum += term;
    }
    sum
}

/// `log Φ(z)`, the log of the standard normal CDF, to about double precision for every `z`:
/// `log1p(−½ erfc(z/√2))` for `z > 0`, `log(½ erfc(−z/√2))` for `−20 < z ≤ 0`, and below
/// `log φ(z) − log(−z) + log S(z)` with the asymptotic series
/// `S(z) = 1 − 1/z² + 3/z⁴ − … + (−1)^n (2n − 1)!!/z^{2n}` to ten terms (truncation error below
/// `4·10⁻¹⁹` relative at `z = −20`), so that it stays finite where `Φ(z)` underflows
/// (`log Φ(−10⁴) ≈ −5·10⁷`). `−∞` at `z = −∞` (and, through `z²` overflowing, for
/// `z < −1.3·10¹⁵⁴`); NaN for NaN.
pub fn log_ndtr(z: f64) -> f64 {
    if z.is_nan() {
        f64::NAN
    } else if z > 0.0 {
        (-0.5 * libm::erfc(z * FRAC_1_SQRT_2)).ln_1p()
    } else if z > SERIES_BELOW {
        (0.5 * libm::erfc(-z * FRAC_1_SQRT_2)).ln()
    } else if z == f64::NEG_INFINITY {
        f64::NEG_INFINITY
    } else {
        log_phi(z) - (-z).ln() + tail_series(z).ln()
    }
}

/// `log(φ(z)/Φ(z))`, without forming the two large logs in the lower tail.
fn log_phi_over_ndtr(z: f64) -> f64 {
    if z <= SERIES_BELOW {
        (-z).ln() - tail_series(z).ln()
    } else {
        log_phi(z) - log_ndtr(z)
    }
}

/// `log(Φ(b) − Φ(a))` for `a ≤ b` (either may be infinite), stable in both tails.
///
/// An interval in the upper half (`a ≥ 0`) is reflected, `Φ(b) − Φ(a) = Φ(−a) − Φ(−b)`. In the
/// lower half (`b ≤ 0`):
/// - for `b > −20`, `a > −37`, the difference `½ (erfc(−b/√2) − erfc(−a/√2))` of two normal
///   doubles, with relative error about `ε (Φ(a) + Φ(b))/(Φ(b) − Φ(a))` — a few ulps unless
///   the interval is narrow compared with the density's scale there;
/// - otherwise `log Φ(b) + log(−expm1(d))` with `d = log Φ(a) − log Φ(b)`, and for `b ≤ −20`
///   `d` written out from the asymptotic series,
///   `d = −(a − b)(a + b)/2 − log1p((a − b)/b) + log S(a) − log S(b)`, a sum of terms of one
///   sign: no `log 0`, no `0 − 0`, a few ulps even for narrow intervals in the far tail.
///
/// An interval containing 0 is `log1p(−(Φ(a) + Φ(−b)))` when the two tails hold less than
/// half the mass, else `log(½ (erf(b/√2) + erf(−a/√2)))`: sums of positive terms.
///
/// `−∞` for `a = b`; NaN for `a > b` or a NaN.
pub fn log_normal_interval(a: f64, b: f64) -> f64 {
    interval(a, b).0
}

/// `(L, log r_a, log r_b)`: `L = log(Φ(b) − Φ(a))` and the logs of `r = φ/(Φ(b) − Φ(a))` at
/// both edges, each formed without subtracting two large logs.
fn interval(a: f64, b: f64) -> (f64, f64, f64) {
    if a.is_nan() || b.is_nan() || a > b {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    if a == b {
        return (f64::NEG_INFINITY, f64::NAN, f64::NAN);
    }
    if a >= 0.0 {
        let (l, rb, ra) = interval(-b, -a);
        return (l, ra, rb);
    }
    let direct = |l: f64| (l, log_phi(a) - l, log_phi(b) - l);
    if b <= 0.0 {
        if a == f64::NEG_INFINITY {
            return (log_ndtr(b), f64::NEG_INFINITY, log_phi_over_ndtr(b));
        }
        if b > SERIES_BELOW && a > PHI_NORMAL_ABOVE {
            let p = 0.5 * (libm::erfc(-b * FRAC_1_SQRT_2) - libm::erfc(-a * FRAC_1_SQRT_2));
            return direct(p.ln());
        }
        let d = if b <= SERIES_BELOW {
            -0.5 * (a - b) * (a + b) - ((a - b) / b).ln_1p() + tail_series(a).ln()
                - tail_series(b).ln()
        } else {
            // Φ(a)/Φ(b) < Φ(−37)/Φ(−20) ~ 1e-210: d's rounding cannot matter.
            log_ndtr(a) - log_ndtr(b)
        };
        // log(1 − Φ(a)/Φ(b)).
        let m = (-d.exp_m1()).ln();
        let log_rb = log_phi_over_ndtr(b) - m;
        // φ(a)/φ(b) = exp((b − a)(b + a)/2).
        let log_ra = log_rb + 0.5 * (b - a) * (b + a);
        return (log_ndtr(b) + m, log_ra, log_rb);
    }
    let tails = 0.5 * libm::erfc(-a * FRAC_1_SQRT_2) + 0.5 * libm::erfc(b * FRAC_1_SQRT_2);
    if tails < 0.5 {
        direct((-tails).ln_1p())
    } else {
        direct((0.5 * (libm::erf(b * FRAC_1_SQRT_2) + libm::erf(-a * FRAC_1_SQRT_2))).ln())
    }
}

/// The derivatives of `L = log(Φ(b) − Φ(a))` that `x` and `δ` need (both edges move by
/// `−dx/δ` and by `−z dδ/δ`): `(∂L/∂a + ∂L/∂b, a ∂L/∂a + b ∂L/∂b)`.
///
/// With `r_a = φ(a)/P`, `r_b = φ(b)/P` (`P = Φ(b) − Φ(a)`): `∂L/∂a = −r_a`, `∂L/∂b = r_b`.
/// For a narrow interval both are large and nearly equal, so the differences are formed from
/// `r_a = r_b exp(e)`, `e = (b − a)(b + a)/2`, through `expm1`, factoring out the larger of the
/// two: nothing cancels and nothing overflows.
fn log_normal_interval_grad(a: f64, b: f64) -> (f64, f64) {
    let (_, log_ra, log_rb) = interval(a, b);
    match (a.is_finite(), b.is_finite()) {
        (false, false) => (0.0, 0.0),
        // a = −∞: ∂L/∂b = r_b only.
        (false, true) => {
            let rb = log_rb.exp();
            (rb, b * rb)
        }
        // b = +∞: ∂L/∂a = −r_a only.
        (true, false) => {
            let ra = log_ra.exp();
            (-ra, -a * ra)
        }
        (true, true) => {
            let width = b - a;
            let e = 0.5 * width * (b + a);
            if e <= 0.0 {
                // φ(a) ≤ φ(b): r_b − r_a = −r_b expm1(e), b r_b − a r_a = r_b (b − a − a expm1(e)).
                let (rb, m) = (log_rb.exp(), e.exp_m1());
                (-rb * m, rb * (width - a * m))
            } else {
                // r_b = r_a exp(−e): r_b − r_a = r_a expm1(−e),
                // b r_b − a r_a = r_a (b − a + b expm1(−e)).
                let (ra, m) = (log_ra.exp(), (-e).exp_m1());
                (ra * m, ra * (width + b * m))
            }
        }
    }
}

/// What the values of a checked column must be.
#[derive(Clone, Copy)]
enum Domain {
    Finite,
    NonNegative,
    Positive,
}

/// The batch size and dtype of data `y`, which must be `(B, 1)`, `f32` or `f64`.
fn data_column(y: &Tensor) -> Result<(usize, DType)> {
    Ok((column_rows("y", y)?, float_dtype("y", y)?))
}

fn float_dtype(name: &'static str, t: &Tensor) -> Result<DType> {
    match t.dtype() {
        d @ (DType::F32 | DType::F64) => Ok(d),
        other => Err(Error::invalid(
            name,
            format!("dtype {other:?}"),
            "must be f32 or f64",
        )),
    }
}

/// Checks that `t` is `(rows, 1)` of `dtype` with values in `domain`; returns them.
fn column(
    name: &'static str,
    t: &Tensor,
    rows: usize,
    dtype: DType,
    domain: Domain,
) -> Result<Vec<f64>> {
    if t.dims() != [rows, 1] {
        return Err(Error::invalid(
            name,
            format!("shape {:?} for a batch of {rows}", t.dims()),
            "must be (batch, 1) like the data",
        ));
    }
    if t.dtype() != dtype {
        return Err(Error::invalid(
            name,
            format!("dtype {:?} with data of dtype {dtype:?}", t.dtype()),
            "must have the data's dtype",
        ));
    }
    let values = host::<f64>(t)?;
    for (i, &v) in values.iter().enumerate() {
        let (ok, why) = match domain {
            Domain::Finite => (v.is_finite(), "must be finite"),
            Domain::NonNegative => (v.is_finite() && v >= 0.0, "must be finite and ≥ 0"),
            Domain::Positive => (v.is_finite() && v > 0.0, "must be finite and > 0"),
        };
        if !ok {
            return Err(Error::invalid(name, format!("{v} in row {i}"), why));
        }
    }
    Ok(values)
}

/// A width tensor's shape and dtype: `(n, 1)`, float.
fn check_width_tensor(delta: &Tensor) -> Result<()> {
    if !matches!(*delta.dims(), [_, 1]) {
        return Err(Error::invalid(
            "delta",
            format!("shape {:?}", delta.dims()),
            "must be (1, 1) or (batch, 1)",
        ));
    }
    float_dtype("delta", delta)?;
    Ok(())
}

/// The width against a batch: `(1, 1)` or `(batch, 1)`, the data's dtype, finite and positive.
fn check_width(delta: &Tensor, batch: usize, dtype: DType) -> Result<()> {
    let rows = delta.dim(0)?;
    if rows != 1 && rows != batch {
        return Err(Error::invalid(
            "delta",
            format!("shape {:?} for a batch of {batch}", delta.dims()),
            "must be (1, 1) or (batch, 1)",
        ));
    }
    column("delta", delta, rows, dtype, Domain::Positive)?;
    Ok(())
}

#[cfg(test)]
mod tests;
