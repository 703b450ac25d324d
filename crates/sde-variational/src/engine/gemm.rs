//! `C ← α A B + β C` through `matrixmultiply` for the kernels: the one `unsafe` call of the
//! workspace, behind a wrapper that checks every index it can touch.

use super::kernel::Real;

/// A read-only matrix in a slice: element `(i, j)` at `data[i·rs + j·cs]`.
pub(crate) struct Strided<'a, T> {
    data: &'a [T],
    rs: usize,
    cs: usize,
}

impl<'a, T> Strided<'a, T> {
    pub(crate) fn new(data: &'a [T], rs: usize, cs: usize) -> Self {
        Self { data, rs, cs }
    }
}

/// The three slices of one GEMM call, typed for `matrixmultiply`.
pub(crate) enum GemmSlices<'a> {
    F32(&'a [f32], &'a [f32], &'a mut [f32]),
    F64(&'a [f64], &'a [f64], &'a mut [f64]),
}

/// The largest offset `(rows − 1)·rs + (cols − 1)·cs` a strided `rows × cols` matrix touches,
/// `None` on overflow; `rows, cols ≥ 1`.
fn last_offset(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<usize> {
    (rows - 1)
        .checked_mul(rs)?
        .checked_add((cols - 1).checked_mul(cs)?)
}

/// `C ← α A B + β C` for `A` `(m × k)`, `B` `(k × n)` with arbitrary strides and `C` `(m × n)`
/// row-major with row stride `rsc ≥ n`, through `matrixmultiply` (AVX/FMA chosen at run
/// time). The only `unsafe` of the crate: every index the call can touch is checked against the
/// slices first.
#[allow(unsafe_code)]
pub(crate) fn gemm<T: Real>(
    (m, k, n): (usize, usize, usize),
    alpha: T,
    a: Strided<'_, T>,
    b: Strided<'_, T>,
    beta: T,
    c: &mut [T],
    rsc: usize,
) -> candle_core::Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    let fits = |len: usize, last: Option<usize>| matches!(last, Some(l) if l < len);
    let ok = k >= 1
        && fits(a.data.len(), last_offset(m, k, a.rs, a.cs))
        && fits(b.data.len(), last_offset(k, n, b.rs, b.cs))
        && (m == 1 || rsc >= n)
        && fits(c.len(), last_offset(m, n, rsc, 1));
    let to_isize = |s: usize| isize::try_from(s).ok();
    let (Some(rsa), Some(csa), Some(rsb), Some(csb), Some(rsc)) = (
        to_isize(a.rs),
        to_isize(a.cs),
        to_isize(b.rs),
        to_isize(b.cs),
        to_isize(rsc),
    ) else {
        candle_core::bail!("fused_mlp: gemm strides overflow isize");
    };
    if !ok {
        candle_core::bail!("fused_mlp: gemm ({m}×{k})·({k}×{n}) does not fit its buffers");
    }
    let (alpha, beta) = (alpha.to_f64(), beta.to_f64());
    match T::gemm_slices(a.data, b.data, c) {
        // SAFETY: `a` holds every element (i, l) at i·rsa + l·csa for i < m, l < k, `b` every
        // (l, j) at l·rsb + j·csb, and `c` every (i, j) at i·rsc + j for j < n (checked above:
        // the largest such offsets are below the slices' lengths, and strides are non-negative
        // so the smallest is 0). `c` is a unique borrow, distinct (i, j) map to distinct
        // elements since rsc ≥ n (or m = 1), and it cannot alias the shared `a` and `b`.
        GemmSlices::F32(a, b, c) => unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                alpha as f32,
                a.as_ptr(),
                rsa,
                csa,
                b.as_ptr(),
                rsb,
                csb,
                beta as f32,
                c.as_mut_ptr(),
                rsc,
                1,
            )
        },
        // SAFETY: as for the f32 arm.
        GemmSlices::F64(a, b, c) => unsafe {
            matrixmultiply::dgemm(
                m,
                k,
                n,
                alpha,
                a.as_ptr(),
                rsa,
                csa,
                b.as_ptr(),
                rsb,
                csb,
                beta,
                c.as_mut_ptr(),
                rsc,
                1,
            )
        },
    }
    Ok(())
}
