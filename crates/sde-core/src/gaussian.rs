//! Gaussian and Gaussian-mixture distributions in one dimension: log-density, CDF, score and
//! sampling, and Gaussian probability paths with their exact velocities (`docs/MATH.md` §5).

use candle_core::Tensor;
use rand::Rng;

use crate::error::{check_finite, check_positive, Error, Result};
use crate::field::{PointwiseField, Score, VectorField};
use crate::noise::NormalFill;
use crate::real::Real;

const LN_2PI: f64 = 1.837_877_066_409_345_3;

/// The standard normal CDF Φ(z), accurate to double precision in both tails
/// (through `erfc`, so Φ(−40) is a correct tiny number rather than 0 − 0).
pub fn std_normal_cdf(z: f64) -> f64 {
    0.5 * libm::erfc(-z / std::f64::consts::SQRT_2)
}

/// A one-dimensional Gaussian `N(mean, var)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gaussian {
    mean: f64,
    var: f64,
}

impl Gaussian {
    /// `N(mean, var)`; errors unless `mean` is finite and `var` finite and positive.
    pub fn new(mean: f64, var: f64) -> Result<Self> {
        Ok(Self {
            mean: check_finite("mean", mean)?,
            var: check_positive("var", var)?,
        })
    }
    /// The standard normal N(0, 1).
    pub fn standard() -> Self {
        Self {
            mean: 0.0,
            var: 1.0,
        }
    }
    /// The mean.
    pub fn mean(&self) -> f64 {
        self.mean
    }
    /// The variance.
    pub fn var(&self) -> f64 {
        self.var
    }
    /// The standard deviation.
    pub fn std(&self) -> f64 {
        self.var.sqrt()
    }
    /// `log N(x; mean, var)`.
    pub fn log_density(&self, x: f64) -> f64 {
        let d = x - self.mean;
        -0.5 * (d * d / self.var + self.var.ln() + LN_2PI)
    }
    /// The density.
    pub fn density(&self, x: f64) -> f64 {
        self.log_density(x).exp()
    }
    /// The CDF.
    pub fn cdf(&self, x: f64) -> f64 {
        std_normal_cdf((x - self.mean) / self.std())
    }
    /// The score `d/dx log N(x) = −(x − mean)/var`.
    pub fn score_at(&self, x: f64) -> f64 {
        -(x - self.mean) / self.var
    }
    /// `n` independent draws.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R, n: usize) -> Vec<f64> {
        let mut v = vec![0.0; n];
        f64::fill_standard_normal(rng, &mut v);
        let s = self.std();
        v.iter_mut().for_each(|x| *x = self.mean + s * *x);
        v
    }
    /// `KL(self ‖ other)` in closed form.
    pub fn kl(&self, other: &Gaussian) -> f64 {
        let d = self.mean - other.mean;
        0.5 * ((self.var + d * d) / other.var - 1.0 + (other.var / self.var).ln())
    }
    /// The score of this Gaussian applied to a batch tensor: `−(x − mean)/var`.
    pub fn score_tensor(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.affine(-1.0 / self.var, self.mean / self.var)?)
    }
}

/// A one-dimensional Gaussian mixture `Σ_k π_k N(μ_k, s_k²)`.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianMixture {
    weights: Vec<f64>,
    components: Vec<Gaussian>,
}

impl GaussianMixture {
    /// A mixture; `weights` must be positive (they are normalised to sum to one) and as many
    /// as `components`.
    pub fn new(weights: Vec<f64>, components: Vec<Gaussian>) -> Result<Self> {
        if weights.is_empty() || weights.len() != components.len() {
            return Err(Error::ShapeMismatch {
                name: "mixture weights and components",
                left: weights.len().to_string(),
                right: components.len().to_string(),
            });
        }
        for &w in &weights {
            check_positive("weight", w)?;
        }
        let total: f64 = weights.iter().sum();
        Ok(Self {
            weights: weights.iter().map(|w| w / total).collect(),
            components,
        })
    }
    /// The normalised weights.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }
    /// The components.
    pub fn components(&self) -> &[Gaussian] {
        &self.components
    }
    /// The responsibilities `r_k(x) = π_k N_k(x) / p(x)`, computed stably, and `log p(x)`.
    pub fn responsibilities(&self, x: f64) -> (Vec<f64>, f64) {
        let logs: Vec<f64> = self
            .weights
            .iter()
            .zip(&self.components)
            .map(|(w, c)| w.ln() + c.log_density(x))
            .collect();
        let m = logs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = logs.iter().map(|l| (l - m).exp()).sum();
        let log_p = m + s.ln();
        (logs.iter().map(|l| (l - log_p).exp()).collect(), log_p)
    }
    /// `log p(x)`.
    pub fn log_density(&self, x: f64) -> f64 {
        self.responsibilities(x).1
    }
    /// The density.
    pub fn density(&self, x: f64) -> f64 {
        self.log_density(x).exp()
    }
    /// The CDF.
    pub fn cdf(&self, x: f64) -> f64 {
        self.weights
            .iter()
            .zip(&self.components)
            .map(|(w, c)| w * c.cdf(x))
            .sum()
    }
    /// The score `Σ_k r_k(x) ∇log N_k(x)` (`docs/MATH.md` eq. 41–43).
    pub fn score_at(&self, x: f64) -> f64 {
        let (r, _) = self.responsibilities(x);
        r.iter()
            .zip(&self.components)
            .map(|(r, c)| r * c.score_at(x))
            .sum()
    }
    /// The mean.
    pub fn mean(&self) -> f64 {
        self.weights
            .iter()
            .zip(&self.components)
            .map(|(w, c)| w * c.mean())
            .sum()
    }
    /// `n` independent draws (component by weight, then the component's normal).
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R, n: usize) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let u: f64 = rng.random();
                let mut acc = 0.0;
                let mut k = self.weights.len() - 1;
                for (i, w) in self.weights.iter().enumerate() {
                    acc += w;
                    if u < acc {
                        k = i;
                        break;
                    }
                }
                let z = rand_distr::Distribution::<f64>::sample(&rand_distr::StandardNormal, rng);
                self.components[k].mean() + self.components[k].std() * z
            })
            .collect()
    }
}

/// A Gaussian probability path `N(m(t), s(t)²)` with `m` and `s` linear in `t`:
/// `m(t) = (1 − t) m0 + t m1`, `s(t) = (1 − t) s0 + t s1`. Its exact ODE velocity
/// (`docs/MATH.md` eq. 39–40, 44) is `v(x, t) = ṁ + (ṡ / s) (x − m)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearGaussianPath {
    m0: f64,
    m1: f64,
    s0: f64,
    s1: f64,
}

impl LinearGaussianPath {
    /// A path from `N(m0, s0²)` at t = 0 to `N(m1, s1²)` at t = 1; `s0`, `s1` positive.
    pub fn new(m0: f64, s0: f64, m1: f64, s1: f64) -> Result<Self> {
        Ok(Self {
            m0: check_finite("m0", m0)?,
            m1: check_finite("m1", m1)?,
            s0: check_positive("s0", s0)?,
            s1: check_positive("s1", s1)?,
        })
    }
    /// The marginal at time `t`.
    pub fn marginal(&self, t: f64) -> Gaussian {
        let m = (1.0 - t) * self.m0 + t * self.m1;
        let s = (1.0 - t) * self.s0 + t * self.s1;
        Gaussian {
            mean: m,
            var: s * s,
        }
    }
    /// `v(x, t) = ṁ + (ṡ / s)(x − m)`.
    pub fn velocity_at_f64(&self, x: f64, t: f64) -> f64 {
        let m = (1.0 - t) * self.m0 + t * self.m1;
        let s = (1.0 - t) * self.s0 + t * self.s1;
        (self.m1 - self.m0) + (self.s1 - self.s0) / s * (x - m)
    }
}

crate::impl_pointwise_field!(LinearGaussianPath);

impl<T: Real> PointwiseField<T> for LinearGaussianPath {
    fn velocity_at(&self, x: T, t: f64) -> T {
        T::from_f64(self.velocity_at_f64(x.to_f64(), t))
    }
}

/// A mixture of Gaussian paths `q_t = Σ_k π_k N(m_k(t), s_k(t)²)`: its exact marginal
/// velocity `Σ_k r_k v_k` and score `Σ_k r_k ∇log q_t^k` (`docs/MATH.md` eq. 41–43).
#[derive(Debug, Clone, PartialEq)]
pub struct MixturePath {
    weights: Vec<f64>,
    paths: Vec<LinearGaussianPath>,
}

impl MixturePath {
    /// A mixture of `paths` with positive `weights` (normalised).
    pub fn new(weights: Vec<f64>, paths: Vec<LinearGaussianPath>) -> Result<Self> {
        // Validate through GaussianMixture's checks.
        let mix = GaussianMixture::new(weights, paths.iter().map(|p| p.marginal(0.0)).collect())?;
        Ok(Self {
            weights: mix.weights,
            paths,
        })
    }
    /// The marginal mixture at time `t`.
    pub fn marginal(&self, t: f64) -> GaussianMixture {
        GaussianMixture {
            weights: self.weights.clone(),
            components: self.paths.iter().map(|p| p.marginal(t)).collect(),
        }
    }
    fn velocity_score(&self, x: f64, t: f64) -> (f64, f64) {
        self.velocity_score_in(&self.marginal(t), x, t)
    }
    /// Velocity and score at `x` given the marginal `mix` at `t` (computed once per batch).
    fn velocity_score_in(&self, mix: &GaussianMixture, x: f64, t: f64) -> (f64, f64) {
        let (r, _) = mix.responsibilities(x);
        let mut v = 0.0;
        let mut s = 0.0;
        for ((r, p), c) in r.iter().zip(&self.paths).zip(mix.components()) {
            v += r * p.velocity_at_f64(x, t);
            s += r * c.score_at(x);
        }
        (v, s)
    }
}

crate::impl_pointwise_field!(MixturePath);

impl<T: Real> PointwiseField<T> for MixturePath {
    fn velocity_at(&self, x: T, t: f64) -> T {
        T::from_f64(self.velocity_score(x.to_f64(), t).0)
    }
}

impl Score<f64> for MixturePath {
    fn score(&self, x: &f64, t: f64) -> Result<f64> {
        Ok(self.velocity_score(*x, t).1)
    }
}

impl Score<Vec<f64>> for MixturePath {
    fn score(&self, x: &Vec<f64>, t: f64) -> Result<Vec<f64>> {
        let mix = self.marginal(t);
        Ok(x.iter()
            .map(|&v| self.velocity_score_in(&mix, v, t).1)
            .collect())
    }
}

impl VectorField<Tensor> for LinearGaussianPath {
    fn velocity(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        let m = (1.0 - t) * self.m0 + t * self.m1;
        let s = (1.0 - t) * self.s0 + t * self.s1;
        let k = (self.s1 - self.s0) / s;
        Ok(x.affine(k, (self.m1 - self.m0) - k * m)?)
    }
}
