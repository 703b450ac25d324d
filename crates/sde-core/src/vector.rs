//! The state algebra the solvers need: one trait, implemented for `f32`/`f64` scalars, small
//! arrays, `Vec`s of paths and batched candle tensors, so that one solver serves all of them
//! (the way argmin-math gives its solvers tiny algebra traits per backend).

use candle_core::{DType, Tensor};
use rand::Rng;

use crate::error::{Error, Result};
use crate::noise::NormalFill;
use crate::real::Real;

/// A state a solver can advance: an element of a vector space with elementwise products.
///
/// Coefficients are `f64`; `f32` states round them once per operation.
pub trait Vector: Clone + Sized {
    /// `self + a * other`.
    fn add_scaled(&self, a: f64, other: &Self) -> Result<Self>;
    /// `a * self`.
    fn scale(&self, a: f64) -> Result<Self>;
    /// `self + other`.
    fn add(&self, other: &Self) -> Result<Self> {
        self.add_scaled(1.0, other)
    }
    /// `self - other`.
    fn sub(&self, other: &Self) -> Result<Self> {
        self.add_scaled(-1.0, other)
    }
    /// Elementwise product `self ⊙ other` (diagonal diffusion times noise).
    fn mul(&self, other: &Self) -> Result<Self>;
    /// Whether every entry is finite.
    fn all_finite(&self) -> Result<bool>;
    /// The flat (row-major) index of the first entry that is not finite, if any: for error
    /// messages that say where a NaN is (for a `(batch, d)` tensor, row `index / d`).
    fn first_non_finite(&self) -> Result<Option<usize>>;
    /// Independent N(0, 1) draws with the shape (and dtype, device) of `self`.
    fn standard_normal_like<R: Rng + ?Sized>(&self, rng: &mut R) -> Result<Self>;
    /// Number of scalar entries.
    fn n_elements(&self) -> usize;
}

impl<T: Real> Vector for T {
    #[inline]
    fn add_scaled(&self, a: f64, other: &Self) -> Result<Self> {
        Ok(*self + T::from_f64(a) * *other)
    }
    #[inline]
    fn scale(&self, a: f64) -> Result<Self> {
        Ok(T::from_f64(a) * *self)
    }
    #[inline]
    fn mul(&self, other: &Self) -> Result<Self> {
        Ok(*self * *other)
    }
    fn all_finite(&self) -> Result<bool> {
        Ok(Real::is_finite(*self))
    }
    fn first_non_finite(&self) -> Result<Option<usize>> {
        Ok((!Real::is_finite(*self)).then_some(0))
    }
    fn standard_normal_like<R: Rng + ?Sized>(&self, rng: &mut R) -> Result<Self> {
        let mut out = [T::ZERO];
        T::fill_standard_normal(rng, &mut out);
        Ok(out[0])
    }
    fn n_elements(&self) -> usize {
        1
    }
}

fn check_len(name: &'static str, a: usize, b: usize) -> Result<()> {
    if a == b {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            name,
            left: format!("[{a}]"),
            right: format!("[{b}]"),
        })
    }
}

impl<T: Real> Vector for Vec<T> {
    fn add_scaled(&self, a: f64, other: &Self) -> Result<Self> {
        check_len("add_scaled", self.len(), other.len())?;
        let a = T::from_f64(a);
        Ok(self.iter().zip(other).map(|(&x, &y)| x + a * y).collect())
    }
    fn scale(&self, a: f64) -> Result<Self> {
        let a = T::from_f64(a);
        Ok(self.iter().map(|&x| a * x).collect())
    }
    fn mul(&self, other: &Self) -> Result<Self> {
        check_len("mul", self.len(), other.len())?;
        Ok(self.iter().zip(other).map(|(&x, &y)| x * y).collect())
    }
    fn all_finite(&self) -> Result<bool> {
        Ok(self.iter().all(|x| x.is_finite()))
    }
    fn first_non_finite(&self) -> Result<Option<usize>> {
        Ok(self.iter().position(|x| !x.is_finite()))
    }
    fn standard_normal_like<R: Rng + ?Sized>(&self, rng: &mut R) -> Result<Self> {
        let mut out = vec![T::ZERO; self.len()];
        T::fill_standard_normal(rng, &mut out);
        Ok(out)
    }
    fn n_elements(&self) -> usize {
        self.len()
    }
}

impl<T: Real, const N: usize> Vector for [T; N] {
    fn add_scaled(&self, a: f64, other: &Self) -> Result<Self> {
        let a = T::from_f64(a);
        Ok(std::array::from_fn(|i| self[i] + a * other[i]))
    }
    fn scale(&self, a: f64) -> Result<Self> {
        let a = T::from_f64(a);
        Ok(std::array::from_fn(|i| a * self[i]))
    }
    fn mul(&self, other: &Self) -> Result<Self> {
        Ok(std::array::from_fn(|i| self[i] * other[i]))
    }
    fn all_finite(&self) -> Result<bool> {
        Ok(self.iter().all(|x| x.is_finite()))
    }
    fn first_non_finite(&self) -> Result<Option<usize>> {
        Ok(self.iter().position(|x| !x.is_finite()))
    }
    fn standard_normal_like<R: Rng + ?Sized>(&self, rng: &mut R) -> Result<Self> {
        let mut out = [T::ZERO; N];
        T::fill_standard_normal(rng, &mut out);
        Ok(out)
    }
    fn n_elements(&self) -> usize {
        N
    }
}

/// Batched states: a tensor of shape `(batch, dim)` (any shape works; operations are
/// elementwise). `F32` and `F64` are supported; other dtypes error in
/// [`Vector::standard_normal_like`].
impl Vector for Tensor {
    fn add_scaled(&self, a: f64, other: &Self) -> Result<Self> {
        if a == 1.0 {
            return Ok(self.add(other)?);
        }
        if a == -1.0 {
            return Ok(self.sub(other)?);
        }
        Ok(self.add(&other.affine(a, 0.0)?)?)
    }
    fn scale(&self, a: f64) -> Result<Self> {
        Ok(self.affine(a, 0.0)?)
    }
    fn mul(&self, other: &Self) -> Result<Self> {
        Ok(Tensor::mul(self, other)?)
    }
    fn all_finite(&self) -> Result<bool> {
        // Sum of `x - x` is 0 for finite entries and NaN as soon as one entry is ±∞ or NaN.
        let s = self
            .sub(self)?
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?;
        Ok(s == 0.0)
    }
    fn first_non_finite(&self) -> Result<Option<usize>> {
        if self.all_finite()? {
            return Ok(None);
        }
        let v: Vec<f64> = self.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        Ok(v.iter().position(|x| !x.is_finite()))
    }
    fn standard_normal_like<R: Rng + ?Sized>(&self, rng: &mut R) -> Result<Self> {
        tensor_standard_normal(rng, self.dims(), self.dtype(), self.device())
    }
    fn n_elements(&self) -> usize {
        self.elem_count()
    }
}

/// A tensor of independent N(0, 1) draws from a seeded host RNG (candle's CPU `randn` cannot
/// be seeded). Supports `F32` and `F64`.
pub fn tensor_standard_normal<R: Rng + ?Sized>(
    rng: &mut R,
    dims: &[usize],
    dtype: DType,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    match dtype {
        DType::F64 => {
            let mut v = vec![0f64; n];
            f64::fill_standard_normal(rng, &mut v);
            Ok(Tensor::from_vec(v, dims, device)?)
        }
        DType::F32 => {
            let mut v = vec![0f32; n];
            f32::fill_standard_normal(rng, &mut v);
            Ok(Tensor::from_vec(v, dims, device)?)
        }
        other => Err(Error::invalid(
            "dtype",
            format!("{other:?}"),
            "normal draws support F32 and F64",
        )),
    }
}

/// Pairs are states too: the augmented (state, log-density) system of a continuous
/// normalizing flow is integrated as `(S, L)`.
impl<A: Vector, B: Vector> Vector for (A, B) {
    fn add_scaled(&self, a: f64, other: &Self) -> Result<Self> {
        Ok((
            self.0.add_scaled(a, &other.0)?,
            self.1.add_scaled(a, &other.1)?,
        ))
    }
    fn scale(&self, a: f64) -> Result<Self> {
        Ok((self.0.scale(a)?, self.1.scale(a)?))
    }
    fn mul(&self, other: &Self) -> Result<Self> {
        Ok((self.0.mul(&other.0)?, self.1.mul(&other.1)?))
    }
    fn all_finite(&self) -> Result<bool> {
        Ok(self.0.all_finite()? && self.1.all_finite()?)
    }
    fn first_non_finite(&self) -> Result<Option<usize>> {
        Ok(match self.0.first_non_finite()? {
            Some(i) => Some(i),
            None => self.1.first_non_finite()?.map(|i| self.0.n_elements() + i),
        })
    }
    fn standard_normal_like<R: Rng + ?Sized>(&self, rng: &mut R) -> Result<Self> {
        let a = self.0.standard_normal_like(rng)?;
        Ok((a, self.1.standard_normal_like(rng)?))
    }
    fn n_elements(&self) -> usize {
        self.0.n_elements() + self.1.n_elements()
    }
}
