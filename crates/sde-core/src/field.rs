//! Capabilities as small traits: an ODE vector field, an SDE drift, a diffusion, a score.
//!
//! Each trait has one job and is generic over the state type `S` (see
//! [`Vector`]), so one closed-form process can implement it for `f64`, for
//! `Vec<f64>` of independent paths and for batched candle tensors, and one solver serves all.
//! Time `t` is always an `f64` in `[0, 1]` by convention (t = 0 prior, t = 1 data;
//! `docs/MATH.md`, "Notation").

use crate::error::Result;
use crate::real::Real;
use crate::vector::Vector;

/// The right-hand side of an ODE `dx/dt = v(x, t)`.
pub trait VectorField<S> {
    /// The velocity `v(x, t)`, shaped like `x`.
    fn velocity(&self, x: &S, t: f64) -> Result<S>;
}

/// The drift `f(x, t)` of an Itô SDE `dx = f dt + g dW` (`docs/MATH.md` eq. 2).
pub trait Drift<S> {
    /// The drift `f(x, t)`, shaped like `x`.
    fn drift(&self, x: &S, t: f64) -> Result<S>;
}

/// The value of a diffusion coefficient: either an `x`-independent multiple of the identity,
/// `g(t) I` (then `∇·D = 0`), or a diagonal `diag(g(x, t))` shaped like the state.
#[derive(Debug, Clone)]
pub enum Noise<S> {
    /// `g(t) I`, the same for every entry and independent of `x`.
    Scalar(f64),
    /// `diag(g)`, one entry per state entry; may depend on `x`.
    Diagonal(S),
}

impl<S: Vector> Noise<S> {
    /// `g ⊙ dw`: the diffusion applied to a Brownian increment shaped like the state.
    pub fn apply(&self, dw: &S) -> Result<S> {
        match self {
            Noise::Scalar(g) => dw.scale(*g),
            Noise::Diagonal(g) => g.mul(dw),
        }
    }

    /// `x + c g ⊙ eps`: adds the scaled diffusion term to `x` in as few passes as possible
    /// (one `add_scaled` for scalar noise).
    pub fn add_to(&self, x: &S, c: f64, eps: &S) -> Result<S> {
        match self {
            Noise::Scalar(g) => x.add_scaled(c * g, eps),
            Noise::Diagonal(g) => x.add_scaled(c, &g.mul(eps)?),
        }
    }

    /// `D v = g² ⊙ v`, the diffusion matrix `D = g gᵀ` applied to `v`.
    pub fn apply_d(&self, v: &S) -> Result<S> {
        match self {
            Noise::Scalar(g) => v.scale(g * g),
            Noise::Diagonal(g) => g.mul(&g.mul(v)?),
        }
    }
}

/// The diffusion `g(x, t)` of an Itô SDE, diagonal (scalar noise is the special case
/// [`Noise::Scalar`]).
pub trait Diffusion<S> {
    /// The diffusion coefficient at `(x, t)`.
    fn diffusion(&self, x: &S, t: f64) -> Result<Noise<S>>;

    /// `∇·D` for `D = diag(g²)`: the vector with entries `∂_i g_i(x, t)²`, or `None` where
    /// `D` does not depend on `x` (`docs/MATH.md` §2). The Fokker–Planck adapters need it.
    fn diffusion_divergence(&self, x: &S, t: f64) -> Result<Option<S>>;
}

/// A score `∇_x log p_t(x)`.
pub trait Score<S> {
    /// The score at `(x, t)`, shaped like `x`.
    fn score(&self, x: &S, t: f64) -> Result<S>;
}

/// An ODE field together with its divergence `∇·v`, the input of the augmented
/// (state, log-density) integration of a continuous normalizing flow (`docs/MATH.md` §3).
///
/// `L` is the per-sample scalar type: `f64` for `f64` states, a `(batch,)` or `(batch, 1)`
/// tensor for batched tensors.
pub trait DivergenceField<S, L> {
    /// `(v(x, t), ∇·v(x, t))`.
    fn velocity_divergence(&self, x: &S, t: f64) -> Result<(S, L)>;
}

/// A one-dimensional SDE given pointwise: the same scalar law applied to every entry.
///
/// The closed-form processes of [`crate::process`] implement it, which gives them [`Drift`]
/// and [`Diffusion`] for `f32`, `f64`, `Vec<f32>` and `Vec<f64>` (independent paths), and lets
/// the solvers' slice fast path fuse a whole step into one loop over the paths. For a process
/// of your own, `sde_core::impl_pointwise_sde!(MyProcess);` gives the same implementations.
pub trait PointwiseSde<T: Real> {
    /// `f(x, t)`.
    fn drift_at(&self, x: T, t: f64) -> T;
    /// `g(x, t)`.
    fn diffusion_at(&self, x: T, t: f64) -> T;
    /// `∂_x g(x, t)²`; zero for additive noise.
    fn diffusion_sq_dx_at(&self, x: T, t: f64) -> T;
    /// Whether `g` is independent of `x` (additive noise).
    fn is_additive(&self) -> bool;
}

/// A one-dimensional ODE field given pointwise, applied to every entry.
pub trait PointwiseField<T: Real> {
    /// `v(x, t)`.
    fn velocity_at(&self, x: T, t: f64) -> T;
}

/// Implements [`Drift`] and [`Diffusion`] for `f32`, `f64`, `[f32; N]`, `[f64; N]`,
/// `Vec<f32>`, `Vec<f64>` from a
/// type's [`PointwiseSde`] implementations.
#[macro_export]
macro_rules! impl_pointwise_sde {
    ($ty:ty) => {
        $crate::impl_pointwise_sde!(@one $ty, f32);
        $crate::impl_pointwise_sde!(@one $ty, f64);
    };
    (@one $ty:ty, $t:ty) => {
        impl $crate::Drift<$t> for $ty {
            #[inline]
            fn drift(&self, x: &$t, t: f64) -> $crate::Result<$t> {
                Ok($crate::PointwiseSde::<$t>::drift_at(self, *x, t))
            }
        }
        impl $crate::Diffusion<$t> for $ty {
            #[inline]
            fn diffusion(&self, x: &$t, t: f64) -> $crate::Result<$crate::Noise<$t>> {
                Ok($crate::Noise::Diagonal($crate::PointwiseSde::<$t>::diffusion_at(self, *x, t)))
            }
            fn diffusion_divergence(&self, x: &$t, t: f64) -> $crate::Result<Option<$t>> {
                let p = $crate::PointwiseSde::<$t>::is_additive(self);
                Ok((!p).then(|| $crate::PointwiseSde::<$t>::diffusion_sq_dx_at(self, *x, t)))
            }
        }
        impl<const N: usize> $crate::Drift<[$t; N]> for $ty {
            #[inline]
            fn drift(&self, x: &[$t; N], t: f64) -> $crate::Result<[$t; N]> {
                Ok(x.map(|v| $crate::PointwiseSde::<$t>::drift_at(self, v, t)))
            }
        }
        impl<const N: usize> $crate::Diffusion<[$t; N]> for $ty {
            #[inline]
            fn diffusion(&self, x: &[$t; N], t: f64) -> $crate::Result<$crate::Noise<[$t; N]>> {
                Ok($crate::Noise::Diagonal(
                    x.map(|v| $crate::PointwiseSde::<$t>::diffusion_at(self, v, t)),
                ))
            }
            fn diffusion_divergence(&self, x: &[$t; N], t: f64) -> $crate::Result<Option<[$t; N]>> {
                let p = $crate::PointwiseSde::<$t>::is_additive(self);
                Ok((!p).then(|| x.map(|v| $crate::PointwiseSde::<$t>::diffusion_sq_dx_at(self, v, t))))
            }
        }
        impl $crate::Drift<Vec<$t>> for $ty {
            fn drift(&self, x: &Vec<$t>, t: f64) -> $crate::Result<Vec<$t>> {
                Ok(x.iter().map(|&v| $crate::PointwiseSde::<$t>::drift_at(self, v, t)).collect())
            }
        }
        impl $crate::Diffusion<Vec<$t>> for $ty {
            fn diffusion(&self, x: &Vec<$t>, t: f64) -> $crate::Result<$crate::Noise<Vec<$t>>> {
                if $crate::PointwiseSde::<$t>::is_additive(self) {
                    let g = $crate::PointwiseSde::<$t>::diffusion_at(self, 0.0, t);
                    Ok($crate::Noise::Scalar(g as f64))
                } else {
                    Ok($crate::Noise::Diagonal(
                        x.iter()
                            .map(|&v| $crate::PointwiseSde::<$t>::diffusion_at(self, v, t))
                            .collect(),
                    ))
                }
            }
            fn diffusion_divergence(&self, x: &Vec<$t>, t: f64) -> $crate::Result<Option<Vec<$t>>> {
                if $crate::PointwiseSde::<$t>::is_additive(self) {
                    Ok(None)
                } else {
                    Ok(Some(
                        x.iter()
                            .map(|&v| $crate::PointwiseSde::<$t>::diffusion_sq_dx_at(self, v, t))
                            .collect(),
                    ))
                }
            }
        }
    };
}

/// Implements [`VectorField`] for `f32`, `f64`, `Vec<f32>`, `Vec<f64>` from a type's
/// [`PointwiseField`] implementations.
#[macro_export]
macro_rules! impl_pointwise_field {
    ($ty:ty) => {
        $crate::impl_pointwise_field!(@one $ty, f32);
        $crate::impl_pointwise_field!(@one $ty, f64);
    };
    (@one $ty:ty, $t:ty) => {
        impl $crate::VectorField<$t> for $ty {
            #[inline]
            fn velocity(&self, x: &$t, t: f64) -> $crate::Result<$t> {
                Ok($crate::PointwiseField::<$t>::velocity_at(self, *x, t))
            }
        }
        impl $crate::VectorField<Vec<$t>> for $ty {
            fn velocity(&self, x: &Vec<$t>, t: f64) -> $crate::Result<Vec<$t>> {
                Ok(x.iter().map(|&v| $crate::PointwiseField::<$t>::velocity_at(self, v, t)).collect())
            }
        }
    };
}

/// Wraps a closure `|x, t| -> Result<S>` as a [`VectorField`], [`Drift`] or [`Score`].
#[derive(Debug, Clone, Copy)]
pub struct FnField<F>(pub F);

impl<S, F: Fn(&S, f64) -> Result<S>> VectorField<S> for FnField<F> {
    fn velocity(&self, x: &S, t: f64) -> Result<S> {
        (self.0)(x, t)
    }
}

impl<S, F: Fn(&S, f64) -> Result<S>> Drift<S> for FnField<F> {
    fn drift(&self, x: &S, t: f64) -> Result<S> {
        (self.0)(x, t)
    }
}

impl<S, F: Fn(&S, f64) -> Result<S>> Score<S> for FnField<F> {
    fn score(&self, x: &S, t: f64) -> Result<S> {
        (self.0)(x, t)
    }
}
