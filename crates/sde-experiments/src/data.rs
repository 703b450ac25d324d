//! The 1-D benchmark data: a mixture of Laplace distributions (`docs/MATH.md` §9, paper §8),
//! and the reference code's two other 1-D data sets, a single Laplace(0, 1) and N(−1, 2²)
//! ([`Distribution`]), each with its exact density and population log-likelihood.

use rand::Rng;
use rand_distr::StandardNormal;

use crate::error::{Error, Result};

/// An equal-weight mixture of Laplace distributions with a common scale:
/// `p(y) = (1/K) Σ_k (1/2b) exp(−|y − m_k| / b)`.
#[derive(Debug, Clone, PartialEq)]
pub struct LaplaceMixture {
    locations: Vec<f64>,
    scale: f64,
}

impl LaplaceMixture {
    /// A mixture with the given `locations` (at least one, finite) and `scale` (positive).
    pub fn new(locations: Vec<f64>, scale: f64) -> Result<Self> {
        if locations.is_empty() {
            return Err(Error::invalid(
                "locations",
                "[]",
                "need at least one location",
            ));
        }
        if let Some(&m) = locations.iter().find(|m| !m.is_finite()) {
            return Err(Error::invalid("location", m, "must be finite"));
        }
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::invalid(
                "scale",
                scale,
                "must be finite and positive",
            ));
        }
        Ok(Self { locations, scale })
    }

    /// One Laplace(0, 1): the reference code's second data set.
    pub fn standard() -> Self {
        Self {
            locations: vec![0.0],
            scale: 1.0,
        }
    }

    /// The paper's benchmark: locations −8, −4, 0, 4, 8 and scale 1.
    pub fn paper() -> Self {
        Self {
            locations: vec![-8.0, -4.0, 0.0, 4.0, 8.0],
            scale: 1.0,
        }
    }

    /// The component locations.
    pub fn locations(&self) -> &[f64] {
        &self.locations
    }

    /// The density `p(y)`.
    pub fn density(&self, y: f64) -> f64 {
        let k = self.locations.len() as f64;
        self.locations
            .iter()
            .map(|m| (-(y - m).abs() / self.scale).exp())
            .sum::<f64>()
            / (2.0 * self.scale * k)
    }

    /// `log p(y)`, computed stably far from every component.
    pub fn log_density(&self, y: f64) -> f64 {
        let nearest = self
            .locations
            .iter()
            .map(|m| (y - m).abs())
            .fold(f64::INFINITY, f64::min);
        let k = self.locations.len() as f64;
        let s: f64 = self
            .locations
            .iter()
            .map(|m| (-((y - m).abs() - nearest) / self.scale).exp())
            .sum();
        -nearest / self.scale + s.ln() - (2.0 * self.scale * k).ln()
    }

    /// `n` independent draws: a uniformly chosen component, then its Laplace by inversion.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R, n: usize) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let k = rng.random_range(0..self.locations.len());
                let u: f64 = rng.random::<f64>() - 0.5;
                // u ∈ [−½, ½): |u| < ½, so 1 − 2|u| ∈ (0, 1] and the log is finite.
                self.locations[k] - self.scale * u.signum() * (1.0 - 2.0 * u.abs()).ln()
            })
            .collect()
    }

    /// The population expected log-likelihood `E_p[log p(y)]` (negative differential entropy)
    /// by composite Simpson quadrature on `[min − 40b, max + 40b]` with step `b/1000`; the grid
    /// puts every kink `m_k` on a node, so the rule keeps its fourth order. For the paper's
    /// mixture this is −2.98755 nats (`docs/MATH.md` §9).
    pub fn expected_log_likelihood(&self) -> f64 {
        let lo = self.locations.iter().cloned().fold(f64::INFINITY, f64::min) - 40.0 * self.scale;
        let hi = self
            .locations
            .iter()
            .cloned()
            .fold(f64::NEG_INFINITY, f64::max)
            + 40.0 * self.scale;
        let h = self.scale / 1000.0;
        let n = (((hi - lo) / h).round() as usize) & !1; // even number of intervals
        let f = |y: f64| {
            let p = self.density(y);
            if p > 0.0 {
                p * self.log_density(y)
            } else {
                0.0
            }
        };
        let mut s = f(lo) + f(lo + n as f64 * h);
        for i in 1..n {
            s += if i % 2 == 1 { 4.0 } else { 2.0 } * f(lo + i as f64 * h);
        }
        s * h / 3.0
    }

    /// The mean log-density of a sample: its "true log-likelihood".
    pub fn mean_log_likelihood(&self, ys: &[f64]) -> f64 {
        ys.iter().map(|&y| self.log_density(y)).sum::<f64>() / ys.len() as f64
    }
}

/// `N(mean, sd²)`: the reference code's third data set is `N(−1, 2²)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gaussian1d {
    mean: f64,
    sd: f64,
}

impl Gaussian1d {
    /// `N(mean, sd²)` for a finite mean and a finite positive `sd`.
    pub fn new(mean: f64, sd: f64) -> Result<Self> {
        if !mean.is_finite() {
            return Err(Error::invalid("mean", mean, "must be finite"));
        }
        if !(sd.is_finite() && sd > 0.0) {
            return Err(Error::invalid("sd", sd, "must be finite and positive"));
        }
        Ok(Self { mean, sd })
    }

    /// `log p(y)`.
    pub fn log_density(&self, y: f64) -> f64 {
        let z = (y - self.mean) / self.sd;
        -0.5 * z * z - self.sd.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln()
    }
}

/// A 1-D data distribution with an exact density: what `cargo xtask reproduce --data` selects.
#[derive(Debug, Clone, PartialEq)]
pub enum Distribution {
    /// A Laplace mixture (the paper's benchmark, or one Laplace).
    Laplace(LaplaceMixture),
    /// A normal distribution.
    Gaussian(Gaussian1d),
}

impl Distribution {
    /// The reference code's data sets by name: `laplace-mixture` (the paper's), `laplace`
    /// (Laplace(0, 1)) and `gaussian` (N(−1, 2²)).
    ///
    /// # Errors
    /// Any other name.
    pub fn by_name(name: &str) -> Result<Self> {
        match name {
            "laplace-mixture" => Ok(Self::Laplace(LaplaceMixture::paper())),
            "laplace" => Ok(Self::Laplace(LaplaceMixture::standard())),
            "gaussian" => Ok(Self::Gaussian(Gaussian1d::new(-1.0, 2.0)?)),
            other => Err(Error::invalid(
                "data",
                other,
                "must be laplace-mixture, laplace or gaussian",
            )),
        }
    }

    /// The density `p(y)`.
    pub fn density(&self, y: f64) -> f64 {
        match self {
            Self::Laplace(m) => m.density(y),
            Self::Gaussian(g) => g.log_density(y).exp(),
        }
    }

    /// `log p(y)`.
    pub fn log_density(&self, y: f64) -> f64 {
        match self {
            Self::Laplace(m) => m.log_density(y),
            Self::Gaussian(g) => g.log_density(y),
        }
    }

    /// `n` independent draws.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R, n: usize) -> Vec<f64> {
        match self {
            Self::Laplace(m) => m.sample(rng, n),
            Self::Gaussian(g) => (0..n)
                .map(|_| g.mean + g.sd * rng.sample::<f64, _>(StandardNormal))
                .collect(),
        }
    }

    /// The population expected log-likelihood `E_p[log p(y)]`: quadrature for a Laplace
    /// mixture, `−½ log(2πe sd²)` for a normal.
    pub fn expected_log_likelihood(&self) -> f64 {
        match self {
            Self::Laplace(m) => m.expected_log_likelihood(),
            Self::Gaussian(g) => {
                -0.5 * (2.0 * std::f64::consts::PI * std::f64::consts::E * g.sd * g.sd).ln()
            }
        }
    }

    /// The mean log-density of a sample: its "true log-likelihood".
    pub fn mean_log_likelihood(&self, ys: &[f64]) -> f64 {
        ys.iter().map(|&y| self.log_density(y)).sum::<f64>() / ys.len() as f64
    }
}

impl From<LaplaceMixture> for Distribution {
    fn from(m: LaplaceMixture) -> Self {
        Self::Laplace(m)
    }
}

/// A training and a validation set drawn with a fixed seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// The training points.
    pub train: Vec<f64>,
    /// The validation points.
    pub validation: Vec<f64>,
}

impl Dataset {
    /// `n_train` and `n_validation` draws from `distribution` (a [`Distribution`] or a
    /// [`LaplaceMixture`]) with an RNG seeded by `seed` (the training set first).
    pub fn draw(
        distribution: &(impl Into<Distribution> + Clone),
        n_train: usize,
        n_validation: usize,
        seed: u64,
    ) -> Result<Self> {
        if n_train == 0 {
            return Err(Error::invalid("n_train", 0, "must be at least 1"));
        }
        if n_validation == 0 {
            return Err(Error::invalid("n_validation", 0, "must be at least 1"));
        }
        Ok(Self::draw_valid(
            &distribution.clone().into(),
            n_train,
            n_validation,
            seed,
        ))
    }

    /// The paper's sizes: 1,000 training and 8,000 validation points.
    pub fn paper(seed: u64) -> Self {
        Self::draw_valid(&LaplaceMixture::paper().into(), 1000, 8000, seed)
    }

    fn draw_valid(mixture: &Distribution, n_train: usize, n_validation: usize, seed: u64) -> Self {
        let mut rng = <crate::train::TrainRng as rand::SeedableRng>::seed_from_u64(seed);
        let train = mixture.sample(&mut rng, n_train);
        let validation = mixture.sample(&mut rng, n_validation);
        Self { train, validation }
    }
}
