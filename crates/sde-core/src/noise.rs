//! Standard-normal draws from a caller-seeded RNG.
//!
//! Architecture invariant: nothing in this workspace draws randomness from a global or
//! thread-local generator. Every draw goes through an RNG the caller seeds and passes in, so
//! the same seed gives bit-identical results (candle's CPU `Tensor::randn` cannot be seeded
//! and is never used).

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// Fills slices with independent standard-normal draws.
pub trait NormalFill: Sized {
    /// Overwrites every entry of `out` with an independent N(0, 1) draw from `rng`.
    fn fill_standard_normal<R: Rng + ?Sized>(rng: &mut R, out: &mut [Self]);
}

impl NormalFill for f64 {
    fn fill_standard_normal<R: Rng + ?Sized>(rng: &mut R, out: &mut [Self]) {
        for v in out.iter_mut() {
            *v = StandardNormal.sample(rng);
        }
    }
}

impl NormalFill for f32 {
    fn fill_standard_normal<R: Rng + ?Sized>(rng: &mut R, out: &mut [Self]) {
        for v in out.iter_mut() {
            *v = StandardNormal.sample(rng);
        }
    }
}

/// A vector of `n` independent N(0, 1) draws.
pub fn standard_normal_vec<T: NormalFill + Default + Clone, R: Rng + ?Sized>(
    rng: &mut R,
    n: usize,
) -> Vec<T> {
    let mut v = vec![T::default(); n];
    T::fill_standard_normal(rng, &mut v);
    v
}
