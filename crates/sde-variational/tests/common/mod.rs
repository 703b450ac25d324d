//! Helpers shared by this crate's integration tests.

use candle_core::{DType, Tensor};
use sde_variational::Result;

/// The entries of `t` as `f64`s.
pub fn values(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?)
}

/// `max |a − b| / max |b|`: the relative error in the max norm. Entry-wise relative errors
/// would blow up where a derivative happens to cross zero.
pub fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (a, b) = (values(a)?, values(b)?);
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    Ok(diff / scale)
}
