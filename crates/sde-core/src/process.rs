//! Closed-form processes with exact marginals: the reference problems that tests and benches
//! check the solvers against (diffsol keeps such problems in one public module too).
//!
//! Every process here is one-dimensional and acts entrywise, so it is a state-generic SDE for
//! `f32`/`f64` scalars, `Vec`s of independent paths ([`PointwiseSde`]) and batched candle
//! tensors ([`Drift`]/[`Diffusion`] for `Tensor`).

use candle_core::Tensor;

use crate::error::{check_finite, check_non_negative, check_positive, Error, Result};
use crate::field::{Diffusion, Drift, Noise, PointwiseSde, Score};
use crate::gaussian::Gaussian;
use crate::real::Real;

/// A linear SDE with additive noise, `dx = (a(t) x + b(t)) dt + g(t) dW`, whose marginals
/// from a Gaussian start are Gaussian in closed form.
pub trait LinearGaussianSde {
    /// Mean and variance at `t` when `x_0 ~ N(m0, v0)` at t = 0 (`v0 = 0`: a fixed start).
    fn mean_variance(&self, m0: f64, v0: f64, t: f64) -> (f64, f64);
}

macro_rules! tensor_sde {
    ($ty:ty) => {
        impl Drift<Tensor> for $ty {
            fn drift(&self, x: &Tensor, t: f64) -> Result<Tensor> {
                let (a, b) = self.drift_coefficients(t);
                Ok(x.affine(a, b)?)
            }
        }
        impl Diffusion<Tensor> for $ty {
            fn diffusion(&self, _x: &Tensor, t: f64) -> Result<Noise<Tensor>> {
                Ok(Noise::Scalar(self.noise_scale(t)))
            }
            fn diffusion_divergence(&self, _x: &Tensor, _t: f64) -> Result<Option<Tensor>> {
                Ok(None)
            }
        }
        $crate::impl_pointwise_sde!($ty);
        impl<T: Real> PointwiseSde<T> for $ty {
            #[inline(always)]
            fn drift_at(&self, x: T, t: f64) -> T {
                let (a, b) = self.drift_coefficients(t);
                T::from_f64(a) * x + T::from_f64(b)
            }
            #[inline(always)]
            fn diffusion_at(&self, _x: T, t: f64) -> T {
                T::from_f64(self.noise_scale(t))
            }
            #[inline(always)]
            fn diffusion_sq_dx_at(&self, _x: T, _t: f64) -> T {
                T::ZERO
            }
            #[inline(always)]
            fn is_additive(&self) -> bool {
                true
            }
        }
    };
}

/// Scaled Brownian motion `dx = s dW`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BrownianMotion {
    sigma: f64,
}

impl BrownianMotion {
    /// `dx = sigma dW`; `sigma` must be finite and non-negative.
    pub fn new(sigma: f64) -> Result<Self> {
        Ok(Self {
            sigma: check_non_negative("sigma", sigma)?,
        })
    }
    fn drift_coefficients(&self, _t: f64) -> (f64, f64) {
        (0.0, 0.0)
    }
    fn noise_scale(&self, _t: f64) -> f64 {
        self.sigma
    }
}

impl LinearGaussianSde for BrownianMotion {
    fn mean_variance(&self, m0: f64, v0: f64, t: f64) -> (f64, f64) {
        (m0, v0 + self.sigma * self.sigma * t)
    }
}
tensor_sde!(BrownianMotion);

/// The Ornstein–Uhlenbeck process `dx = −θ x dt + s dW` (`docs/MATH.md` §2).
///
/// ```
/// use sde_core::{OrnsteinUhlenbeck, LinearGaussianSde};
/// let ou = OrnsteinUhlenbeck::new(1.0, 0.5).unwrap();
/// let (m, v) = ou.mean_variance(2.0, 0.0, 1.0);
/// assert!((m - 2.0 * (-1.0f64).exp()).abs() < 1e-15);
/// assert!((v - 0.25 * (1.0 - (-2.0f64).exp()) / 2.0).abs() < 1e-15);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrnsteinUhlenbeck {
    theta: f64,
    sigma: f64,
}

impl OrnsteinUhlenbeck {
    /// `dx = −theta x dt + sigma dW`; `theta > 0`, `sigma ≥ 0`.
    pub fn new(theta: f64, sigma: f64) -> Result<Self> {
        Ok(Self {
            theta: check_positive("theta", theta)?,
            sigma: check_non_negative("sigma", sigma)?,
        })
    }
    /// θ.
    pub fn theta(&self) -> f64 {
        self.theta
    }
    /// s.
    pub fn sigma(&self) -> f64 {
        self.sigma
    }
    fn drift_coefficients(&self, _t: f64) -> (f64, f64) {
        (-self.theta, 0.0)
    }
    fn noise_scale(&self, _t: f64) -> f64 {
        self.sigma
    }
}

impl LinearGaussianSde for OrnsteinUhlenbeck {
    fn mean_variance(&self, m0: f64, v0: f64, t: f64) -> (f64, f64) {
        let e = (-self.theta * t).exp();
        let var = v0 * e * e
            + self.sigma * self.sigma * (-(-2.0 * self.theta * t).exp_m1()) / (2.0 * self.theta);
        (m0 * e, var)
    }
}
tensor_sde!(OrnsteinUhlenbeck);

/// The variance-preserving (VP) SDE of diffusion models, `dx = −½ β(t) x dt + √β(t) dW`, with
/// `β(t) = β_min + t (β_max − β_min)`. Started from `N(m0, v0)` its marginal is
/// `N(m0 e^{−B/2}, v0 e^{−B} + 1 − e^{−B})`, `B(t) = ∫_0^t β`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VariancePreserving {
    beta_min: f64,
    beta_max: f64,
}

impl VariancePreserving {
    /// The VP SDE with `0 ≤ beta_min ≤ beta_max`, both finite.
    pub fn new(beta_min: f64, beta_max: f64) -> Result<Self> {
        check_non_negative("beta_min", beta_min)?;
        check_finite("beta_max", beta_max)?;
        if beta_max < beta_min {
            return Err(Error::invalid(
                "beta_max",
                beta_max,
                "must be at least beta_min",
            ));
        }
        Ok(Self { beta_min, beta_max })
    }
    /// β(t).
    pub fn beta(&self, t: f64) -> f64 {
        self.beta_min + t * (self.beta_max - self.beta_min)
    }
    /// B(t) = ∫_0^t β(s) ds.
    pub fn integrated_beta(&self, t: f64) -> f64 {
        self.beta_min * t + 0.5 * t * t * (self.beta_max - self.beta_min)
    }
    fn drift_coefficients(&self, t: f64) -> (f64, f64) {
        (-0.5 * self.beta(t), 0.0)
    }
    fn noise_scale(&self, t: f64) -> f64 {
        self.beta(t).sqrt()
    }
}

impl LinearGaussianSde for VariancePreserving {
    fn mean_variance(&self, m0: f64, v0: f64, t: f64) -> (f64, f64) {
        let b = self.integrated_beta(t);
        (m0 * (-0.5 * b).exp(), v0 * (-b).exp() - (-b).exp_m1())
    }
}
tensor_sde!(VariancePreserving);

/// The variance-exploding (VE) SDE `dx = g(t) dW` with noise level
/// `σ(t) = σ_min (σ_max/σ_min)^t` and `g(t)² = dσ²/dt = 2 σ(t)² ln(σ_max/σ_min)`. Started
/// from `N(m0, v0)` its marginal is `N(m0, v0 + σ(t)² − σ_min²)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VarianceExploding {
    sigma_min: f64,
    sigma_max: f64,
}

impl VarianceExploding {
    /// The VE SDE with `0 < sigma_min < sigma_max`, both finite.
    pub fn new(sigma_min: f64, sigma_max: f64) -> Result<Self> {
        check_positive("sigma_min", sigma_min)?;
        check_positive("sigma_max", sigma_max)?;
        if sigma_max <= sigma_min {
            return Err(Error::invalid(
                "sigma_max",
                sigma_max,
                "must be greater than sigma_min",
            ));
        }
        Ok(Self {
            sigma_min,
            sigma_max,
        })
    }
    /// σ(t).
    pub fn noise_level(&self, t: f64) -> f64 {
        self.sigma_min * (self.sigma_max / self.sigma_min).powf(t)
    }
    fn drift_coefficients(&self, _t: f64) -> (f64, f64) {
        (0.0, 0.0)
    }
    fn noise_scale(&self, t: f64) -> f64 {
        self.noise_level(t) * (2.0 * (self.sigma_max / self.sigma_min).ln()).sqrt()
    }
}

impl LinearGaussianSde for VarianceExploding {
    fn mean_variance(&self, m0: f64, v0: f64, t: f64) -> (f64, f64) {
        let s = self.noise_level(t);
        (m0, v0 + s * s - self.sigma_min * self.sigma_min)
    }
}
tensor_sde!(VarianceExploding);

/// Geometric Brownian motion `dx = μ x dt + s x dW` (multiplicative noise): `E[x_t] = x_0
/// e^{μt}`, `E[x_t²] = x_0² e^{(2μ + s²)t}` and the exact path
/// `x_t = x_0 exp((μ − s²/2) t + s W_t)` (`docs/MATH.md` §2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeometricBrownianMotion {
    mu: f64,
    sigma: f64,
}

impl GeometricBrownianMotion {
    /// `dx = mu x dt + sigma x dW`; `mu` finite, `sigma ≥ 0`.
    pub fn new(mu: f64, sigma: f64) -> Result<Self> {
        Ok(Self {
            mu: check_finite("mu", mu)?,
            sigma: check_non_negative("sigma", sigma)?,
        })
    }
    /// The exact solution at `t` given the Brownian path value `w_t` (W_0 = 0).
    pub fn exact(&self, x0: f64, t: f64, w_t: f64) -> f64 {
        x0 * ((self.mu - 0.5 * self.sigma * self.sigma) * t + self.sigma * w_t).exp()
    }
    /// `E[x_t]` from a fixed `x0`.
    pub fn mean(&self, x0: f64, t: f64) -> f64 {
        x0 * (self.mu * t).exp()
    }
    /// `E[x_t²]` from a fixed `x0`.
    pub fn second_moment(&self, x0: f64, t: f64) -> f64 {
        x0 * x0 * ((2.0 * self.mu + self.sigma * self.sigma) * t).exp()
    }
}

crate::impl_pointwise_sde!(GeometricBrownianMotion);

impl<T: Real> PointwiseSde<T> for GeometricBrownianMotion {
    #[inline(always)]
    fn drift_at(&self, x: T, _t: f64) -> T {
        T::from_f64(self.mu) * x
    }
    #[inline(always)]
    fn diffusion_at(&self, x: T, _t: f64) -> T {
        T::from_f64(self.sigma) * x
    }
    #[inline(always)]
    fn diffusion_sq_dx_at(&self, x: T, _t: f64) -> T {
        T::from_f64(2.0 * self.sigma * self.sigma) * x
    }
    fn is_additive(&self) -> bool {
        false
    }
}

impl Drift<Tensor> for GeometricBrownianMotion {
    fn drift(&self, x: &Tensor, _t: f64) -> Result<Tensor> {
        Ok(x.affine(self.mu, 0.0)?)
    }
}

impl Diffusion<Tensor> for GeometricBrownianMotion {
    fn diffusion(&self, x: &Tensor, _t: f64) -> Result<Noise<Tensor>> {
        Ok(Noise::Diagonal(x.affine(self.sigma, 0.0)?))
    }
    fn diffusion_divergence(&self, x: &Tensor, _t: f64) -> Result<Option<Tensor>> {
        Ok(Some(x.affine(2.0 * self.sigma * self.sigma, 0.0)?))
    }
}

/// The exact Gaussian marginals `p_t = N(m_t, v_t)` of a [`LinearGaussianSde`] started from
/// `N(m0, v0)`, and their score `−(x − m_t)/v_t`: the exact input of the probability-flow and
/// reverse-time adapters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GaussianMarginals<P> {
    process: P,
    m0: f64,
    v0: f64,
}

impl<P: LinearGaussianSde> GaussianMarginals<P> {
    /// The marginals of `process` from `N(m0, v0)`; `v0` must be positive (a point start has no
    /// score at t = 0).
    pub fn new(process: P, m0: f64, v0: f64) -> Result<Self> {
        Ok(Self {
            process,
            m0: check_finite("m0", m0)?,
            v0: check_positive("v0", v0)?,
        })
    }
    /// The marginal at `t`.
    pub fn at(&self, t: f64) -> Result<Gaussian> {
        let (m, v) = self.process.mean_variance(self.m0, self.v0, t);
        Gaussian::new(m, v)
    }
    /// The process.
    pub fn process(&self) -> &P {
        &self.process
    }
}

impl<P: LinearGaussianSde, T: Real> Score<T> for GaussianMarginals<P> {
    fn score(&self, x: &T, t: f64) -> Result<T> {
        Ok(T::from_f64(self.at(t)?.score_at(x.to_f64())))
    }
}

impl<P: LinearGaussianSde, T: Real> Score<Vec<T>> for GaussianMarginals<P> {
    fn score(&self, x: &Vec<T>, t: f64) -> Result<Vec<T>> {
        let g = self.at(t)?;
        let (a, b) = (T::from_f64(-1.0 / g.var()), T::from_f64(g.mean() / g.var()));
        Ok(x.iter().map(|&v| a * v + b).collect())
    }
}

impl<P: LinearGaussianSde> Score<Tensor> for GaussianMarginals<P> {
    fn score(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        self.at(t)?.score_tensor(x)
    }
}
