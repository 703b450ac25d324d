//! The kernels of [`FusedMlp`](super::FusedMlp): forward and backward of one block of rows,
//! in plain loops and `matrixmultiply` GEMMs, for `f32` and `f64`.
//!
//! Parameter layout (the flat vector of [`Mlp::params`](crate::Mlp::params)): for each affine
//! layer in order, its weight `(out, in)` row-major, then its bias `(out,)`.
//!
//! Row layout: a block of `nb` rows with `K` tangent directions is carried as `R = (1 + K) nb`
//! stacked rows — the values first, then the rows of tangent 1, tangent 2, … — so that each
//! hidden layer is one GEMM over all of them.
//!
//! Tape of one block (what the backward pass reads):
//! `X` (`nb × n_in`), then for every hidden layer `i` its `Aᵢ = [hᵢ; dhᵢ¹; …; dhᵢᴷ]`
//! (`R × Hᵢ`) and, from the second hidden layer on, `dzᵢ¹ … dzᵢᴷ` (`K nb × Hᵢ`; the first
//! layer's `dz` is a column of `W₁`, the same for every row), then for a softplus output its
//! pre-activations `[z; dz¹; …; dzᴷ]` (`R × n_out`).

use std::cell::RefCell;
use std::ops::{Add, AddAssign, Mul, Sub};
use std::sync::{Mutex, PoisonError};

use candle_core::WithDType;

use super::gemm::{gemm, GemmSlices, Strided};
use crate::simd::{wide, Kernel};

/// Recycled tapes are kept up to this many bytes per dtype and thread: enough for the 198 evaluations of
/// a training step of the ODE experiment (about 32 MB).
const POOL_BYTES: usize = 64 << 20;

/// Tape buffers returned after use, one pool per thread. A training step allocates one tape
/// per evaluation and frees them all in its backward pass; through the allocator, that memory
/// went back to the system and came back zeroed page by page every step (page faults and TLB
/// shootdowns cost more than a tenth of the step), so it is kept here instead. Per thread,
/// because a network's block runs on the same thread forward and backward: its tape's next
/// use is in that core's cache rather than the other's.
struct Pool<T> {
    buffers: Vec<Vec<T>>,
    bytes: usize,
}

impl<T: Real> Pool<T> {
    const fn new() -> Self {
        Self {
            buffers: Vec::new(),
            bytes: 0,
        }
    }

    fn take(cell: &Mutex<Self>, len: usize) -> Vec<T> {
        let reused = {
            let mut pool = cell.lock().unwrap_or_else(PoisonError::into_inner);
            let v = pool.buffers.pop();
            if let Some(v) = &v {
                pool.bytes -= v.capacity() * std::mem::size_of::<T>();
            }
            v
        };
        match reused {
            // Contents are stale; the forward pass overwrites every entry of a tape.
            Some(mut v) => {
                v.resize(len, T::ZERO);
                v
            }
            None => vec![T::ZERO; len],
        }
    }

    fn put(cell: &Mutex<Self>, v: Vec<T>) {
        let bytes = v.capacity() * std::mem::size_of::<T>();
        let mut pool = cell.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.bytes + bytes <= POOL_BYTES {
            pool.bytes += bytes;
            pool.buffers.push(v);
        }
    }
}

thread_local! {
    static POOL_F32: Mutex<Pool<f32>> = const { Mutex::new(Pool::new()) };
    static POOL_F64: Mutex<Pool<f64>> = const { Mutex::new(Pool::new()) };
}

/// The values the kernels are written for: `f32` and `f64`.
pub(crate) trait Real:
    WithDType + PartialOrd + Add<Output = Self> + AddAssign + Sub<Output = Self> + Mul<Output = Self>
{
    const ZERO: Self;
    const ONE: Self;
    const TWO: Self;
    /// `tanh` for the hidden layers: [`fast_tanh`] for `f32`, `f64::tanh` for `f64`.
    fn act(self) -> Self;
    /// `softplus(z) = max(z, 0) + ln(1 + e^{−|z|})`: no overflow, full relative precision.
    fn softplus(self) -> Self;
    /// `sigmoid(z) = 1 / (1 + e^{−z})`, the derivative of softplus, without overflow.
    fn sigmoid(self) -> Self;
    fn gemm_slices<'a>(a: &'a [Self], b: &'a [Self], c: &'a mut [Self]) -> GemmSlices<'a>;
    /// Runs `f` on `n` values of this thread's scratch buffer (contents unspecified).
    fn with_scratch<R>(n: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
    /// A tape buffer of `len` values (stale contents), from the pool if it has one.
    fn buffer(len: usize) -> Vec<Self>;
    /// Returns a tape buffer to the pool.
    fn recycle(v: Vec<Self>);
}

thread_local! {
    static SCRATCH_F32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static SCRATCH_F64: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `n` values of the thread-local buffer `cell`, growing it as needed; a fresh
/// buffer if `cell` is already in use further up the stack.
fn with_cell<T: Real, R>(cell: &RefCell<Vec<T>>, n: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < n {
                buf.resize(n, T::ZERO);
            }
            f(&mut buf[..n])
        }
        Err(_) => f(&mut vec![T::ZERO; n]),
    }
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const TWO: Self = 2.0;
    #[inline]
    fn softplus(self) -> Self {
        self.max(0.0) + (-self.abs()).exp().ln_1p()
    }
    #[inline]
    fn sigmoid(self) -> Self {
        let e = (-self.abs()).exp();
        if self >= 0.0 {
            1.0 / (1.0 + e)
        } else {
            e / (1.0 + e)
        }
    }
    #[inline(always)]
    fn act(self) -> Self {
        fast_tanh(self)
    }
    fn gemm_slices<'a>(a: &'a [Self], b: &'a [Self], c: &'a mut [Self]) -> GemmSlices<'a> {
        GemmSlices::F32(a, b, c)
    }
    fn with_scratch<R>(n: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
        SCRATCH_F32.with(|cell| with_cell(cell, n, f))
    }
    fn buffer(len: usize) -> Vec<Self> {
        POOL_F32.with(|p| Pool::take(p, len))
    }
    fn recycle(v: Vec<Self>) {
        POOL_F32.with(|p| Pool::put(p, v))
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const TWO: Self = 2.0;
    #[inline]
    fn softplus(self) -> Self {
        self.max(0.0) + (-self.abs()).exp().ln_1p()
    }
    #[inline]
    fn sigmoid(self) -> Self {
        let e = (-self.abs()).exp();
        if self >= 0.0 {
            1.0 / (1.0 + e)
        } else {
            e / (1.0 + e)
        }
    }
    #[inline(always)]
    fn act(self) -> Self {
        self.tanh()
    }
    fn gemm_slices<'a>(a: &'a [Self], b: &'a [Self], c: &'a mut [Self]) -> GemmSlices<'a> {
        GemmSlices::F64(a, b, c)
    }
    fn with_scratch<R>(n: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
        SCRATCH_F64.with(|cell| with_cell(cell, n, f))
    }
    fn buffer(len: usize) -> Vec<Self> {
        POOL_F64.with(|p| Pool::take(p, len))
    }
    fn recycle(v: Vec<Self>) {
        POOL_F64.with(|p| Pool::put(p, v))
    }
}

/// `tanh x` in `f32` without a library call, vectorisable, to within 1.5·10⁻⁷ absolute and
/// 2·10⁻⁷ relative (about 3 ulp) of the exact value.
///
/// `tanh |x| = −m / (2 + m)` with `m = expm1(−2|x|) ∈ (−1, 0]`, so nothing overflows or
/// cancels. `expm1(y)` is computed as `2ⁿ (eʳ − 1) + (2ⁿ − 1)` with `n = round(y / ln 2)`,
/// `r = y − n ln 2` (Cody–Waite, two parts of `ln 2`) in `[−ln 2/2, ln 2/2]`, `eʳ − 1` by its
/// Taylor polynomial of degree 7 (truncation below 2·10⁻⁸ relative) and `2ⁿ` built from its
/// exponent bits; for `|x| < ln 2/4` this is `eʳ − 1` itself, accurate relative to `x`.
/// `|x|` is clamped at 9, past which `tanh` rounds to ±1 in `f32`; the sign is copied back,
/// so the function is exactly odd, `|fast_tanh(x)| ≤ 1`, and NaN stays NaN.
///
/// Rounding to `n` uses the `1.5·2²³` trick and `2ⁿ` integer operations on the bits: no
/// branches and no library calls, so loops over slices vectorise (about 1.5 ns per value
/// with SSE2, against 15 ns for the C library's `tanhf`). A rational approximation such as
/// Eigen's `generic_fast_tanh_float` is as fast but only accurate to 4·10⁻⁷.
#[inline(always)]
pub fn fast_tanh(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 = LN2_HI + LN2_LO with LN2_HI exact in 16 bits, so n·LN2_HI is exact for |n| ≤ 2⁸.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5·2²³ rounds to an integer (for |v| < 2²²) and leaves it in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const MAX: f32 = 9.0;
    let ax = x.abs();
    // A comparison rather than `min` keeps NaN.
    let ax = if ax > MAX { MAX } else { ax };
    let y = -2.0 * ax;
    let shifted = y * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (y - n * LN2_HI) - n * LN2_LO;
    let em1_r = r
        * (1.0
            + r * (1.0 / 2.0
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // n ∈ [−26, 0]: 2ⁿ is a normal number with biased exponent n + 127.
    let n_int = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let two_n = f32::from_bits((n_int.wrapping_add(127) << 23) as u32);
    let em1 = two_n * em1_r + (two_n - 1.0);
    (-em1 / (2.0 + em1)).copysign(x)
}

/// `Σ aᵢ bᵢ` with eight partial sums, so the loop vectorises without reassociating floats.
#[inline(always)]
pub(crate) fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::ZERO; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = T::ZERO;
    for (&x, &y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// A forward pass as a [`Kernel`] for [`wide`].
struct ForwardPass<'a, 'n, T> {
    net: &'a Net<'n, T>,
    tape: &'a mut [T],
    out: &'a mut [T],
    scratch: &'a mut [T],
}

impl<T: Real> Kernel for ForwardPass<'_, '_, T> {
    type Output = candle_core::Result<()>;

    #[inline(always)]
    fn run(self) -> Self::Output {
        self.net.forward(self.tape, self.out, self.scratch)
    }
}

/// A backward pass as a [`Kernel`] for [`wide`].
struct BackwardPass<'a, 'n, T> {
    net: &'a Net<'n, T>,
    tape: &'a [T],
    gout: &'a [T],
    gx: &'a mut [T],
    gp: &'a mut [T],
    scratch: &'a mut [T],
}

impl<T: Real> Kernel for BackwardPass<'_, '_, T> {
    type Output = candle_core::Result<()>;

    #[inline(always)]
    fn run(self) -> Self::Output {
        self.net
            .backward(self.tape, self.gout, self.gx, self.gp, self.scratch)
    }
}

/// `y ← y + a x`.
#[inline(always)]
fn axpy<T: Real>(a: T, x: &[T], y: &mut [T]) {
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv += a * xv;
    }
}

/// The network as the kernels see it.
#[derive(Clone, Copy)]
pub(crate) struct Net<'a, T> {
    /// `[n_in, H₁, …, H_L, n_out]`, `L ≥ 1`.
    pub widths: &'a [usize],
    /// Softplus output (else identity).
    pub softplus: bool,
    /// The input coordinates of the tangent directions.
    pub dirs: &'a [usize],
    /// The flat parameters.
    pub params: &'a [T],
}

impl<T: Real> Net<'_, T> {
    pub(crate) fn n_in(&self) -> usize {
        self.widths[0]
    }

    pub(crate) fn n_out(&self) -> usize {
        self.widths[self.widths.len() - 1]
    }

    fn hidden(&self) -> &[usize] {
        &self.widths[1..self.widths.len() - 1]
    }

    fn k(&self) -> usize {
        self.dirs.len()
    }

    fn h_max(&self) -> usize {
        self.hidden().iter().copied().max().unwrap_or(0)
    }

    /// Output values per row: `(1 + K) n_out`.
    pub(crate) fn out_width(&self) -> usize {
        (1 + self.k()) * self.n_out()
    }

    /// The number of parameters `Σ out (in + 1)`.
    pub(crate) fn n_params(widths: &[usize]) -> usize {
        widths.windows(2).map(|w| w[1] * (w[0] + 1)).sum()
    }

    /// Offsets in the tape of a block of `nb` rows: `(A offset, dz offset)` per hidden layer,
    /// and the offset of the output pre-activations; and the total length.
    fn tape_layout(&self, nb: usize) -> (Vec<(usize, usize)>, usize, usize) {
        let (k, rows) = (self.k(), (1 + self.k()) * nb);
        let mut off = nb * self.n_in();
        let mut layers = Vec::with_capacity(self.hidden().len());
        for (i, &h) in self.hidden().iter().enumerate() {
            let a = off;
            off += rows * h;
            let dz = off;
            if i > 0 {
                off += k * nb * h;
            }
            layers.push((a, dz));
        }
        let zo = off;
        if self.softplus {
            off += rows * self.n_out();
        }
        (layers, zo, off)
    }

    pub(crate) fn tape_len(&self, nb: usize) -> usize {
        self.tape_layout(nb).2
    }

    /// The offset of affine layer `i`'s weight in the parameters (its bias follows it).
    fn weight_offset(&self, i: usize) -> usize {
        self.widths[..=i]
            .windows(2)
            .map(|w| w[1] * (w[0] + 1))
            .sum()
    }

    /// Scratch of a forward pass besides the tape: `W₁ᵀ` and the output pre-activations.
    fn forward_scratch_len(&self, nb: usize) -> usize {
        self.n_in() * self.widths[1] + (1 + self.k()) * nb * self.n_out()
    }

    /// Scratch of a backward pass besides the tape: two `R × H_max` gradient buffers, the
    /// output gradient, `W₁ᵀ` and its gradient, one row of `H_max`.
    fn backward_scratch_len(&self, nb: usize) -> usize {
        let rows = (1 + self.k()) * nb;
        2 * rows * self.h_max()
            + rows * self.n_out()
            + 2 * self.n_in() * self.widths[1]
            + self.h_max()
    }

    /// The outputs (`nb × (1 + K) n_out`, each row `[y, ∂y/∂e_{d₁}, …]`) for the inputs `x`
    /// (`nb × n_in`), and the tape if `keep`.
    pub(crate) fn forward_block(
        &self,
        x: &[T],
        keep: bool,
    ) -> candle_core::Result<(Vec<T>, Option<Vec<T>>)> {
        let nb = x.len() / self.n_in();
        let mut out = vec![T::ZERO; nb * self.out_width()];
        let tape_len = self.tape_len(nb);
        let fwd = self.forward_scratch_len(nb);
        if keep {
            let mut tape = T::buffer(tape_len);
            tape[..x.len()].copy_from_slice(x);
            T::with_scratch(fwd, |scratch| {
                wide(ForwardPass {
                    net: self,
                    tape: &mut tape,
                    out: &mut out,
                    scratch,
                })
            })?;
            Ok((out, Some(tape)))
        } else {
            T::with_scratch(tape_len + fwd, |scratch| {
                let (tape, scratch) = scratch.split_at_mut(tape_len);
                tape[..x.len()].copy_from_slice(x);
                wide(ForwardPass {
                    net: self,
                    tape,
                    out: &mut out,
                    scratch,
                })
            })?;
            Ok((out, None))
        }
    }

    /// The gradients `(∂ℓ/∂X` (`nb × n_in`), `∂ℓ/∂params)` for the output gradient `gout`
    /// (`nb × (1 + K) n_out`), from the block's tape, or recomputed from its inputs `x`.
    pub(crate) fn backward_block(
        &self,
        x: &[T],
        tape: Option<&[T]>,
        gout: &[T],
    ) -> candle_core::Result<(Vec<T>, Vec<T>)> {
        let nb = gout.len() / self.out_width();
        let mut gx = vec![T::ZERO; nb * self.n_in()];
        let mut gp = vec![T::ZERO; self.params.len()];
        self.backward_block_into(x, tape, gout, &mut gx, &mut gp)?;
        Ok((gx, gp))
    }

    /// [`backward_block`](Self::backward_block), adding the gradients to `gx` (`nb × n_in`)
    /// and `gp` (the parameters' length) in place: no buffers of its own.
    pub(crate) fn backward_block_into(
        &self,
        x: &[T],
        tape: Option<&[T]>,
        gout: &[T],
        gx: &mut [T],
        gp: &mut [T],
    ) -> candle_core::Result<()> {
        let nb = gout.len() / self.out_width();
        if gx.len() != nb * self.n_in() || gp.len() != self.params.len() {
            candle_core::bail!(
                "fused_mlp: gradient buffers of {} and {} values for {nb} rows and {} parameters",
                gx.len(),
                gp.len(),
                self.params.len()
            );
        }
        let bwd = self.backward_scratch_len(nb);
        match tape {
            Some(tape) => T::with_scratch(bwd, |scratch| {
                wide(BackwardPass {
                    net: self,
                    tape,
                    gout,
                    gx: &mut *gx,
                    gp: &mut *gp,
                    scratch,
                })
            })?,
            None => {
                if x.len() != nb * self.n_in() {
                    candle_core::bail!(
                        "fused_mlp: {} input values for {nb} rows of width {}",
                        x.len(),
                        self.n_in()
                    );
                }
                let tape_len = self.tape_len(nb);
                let scratch_len = bwd.max(self.forward_scratch_len(nb));
                T::with_scratch(tape_len + scratch_len, |scratch| {
                    let (tape, scratch) = scratch.split_at_mut(tape_len);
                    tape[..x.len()].copy_from_slice(x);
                    let mut out = vec![T::ZERO; nb * self.out_width()];
                    wide(ForwardPass {
                        net: self,
                        tape: &mut *tape,
                        out: &mut out,
                        scratch: &mut *scratch,
                    })?;
                    wide(BackwardPass {
                        net: self,
                        tape,
                        gout,
                        gx: &mut *gx,
                        gp: &mut *gp,
                        scratch,
                    })
                })?
            }
        }
        Ok(())
    }

    /// Fills the tape (whose first `nb n_in` entries hold the inputs) and `out`.
    #[inline(always)]
    fn forward(&self, tape: &mut [T], out: &mut [T], scratch: &mut [T]) -> candle_core::Result<()> {
        let (n_in, n_out, k) = (self.n_in(), self.n_out(), self.k());
        let nb = out.len() / self.out_width();
        let rows = (1 + k) * nb;
        let p = self.params;
        let (layers, zo_off, _) = self.tape_layout(nb);
        let h1 = self.widths[1];
        let (w1t, scratch) = scratch.split_at_mut(n_in * h1);
        for j in 0..h1 {
            for c in 0..n_in {
                w1t[c * h1 + j] = p[j * n_in + c];
            }
        }
        let b1 = &p[h1 * n_in..][..h1];

        // First layer: z₁ = X W₁ᵀ + b₁ row by row (n_in is small); dz₁ᵏ = W₁[:, dₖ].
        {
            let (x, rest) = tape.split_at_mut(nb * n_in);
            let a1 = &mut rest[..rows * h1];
            let (vals, tans) = a1.split_at_mut(nb * h1);
            for (b, hrow) in vals.chunks_exact_mut(h1).enumerate() {
                hrow.copy_from_slice(b1);
                for c in 0..n_in {
                    axpy(x[b * n_in + c], &w1t[c * h1..][..h1], hrow);
                }
                for v in hrow.iter_mut() {
                    *v = v.act();
                }
                for (kk, &d) in self.dirs.iter().enumerate() {
                    let trow = &mut tans[(kk * nb + b) * h1..][..h1];
                    for ((tv, &hv), &w) in trow.iter_mut().zip(&*hrow).zip(&w1t[d * h1..][..h1]) {
                        *tv = (T::ONE - hv * hv) * w;
                    }
                }
            }
        }

        // Hidden layers 2 … L: [z; dz¹…] = A_prev Wᵀ, values with the bias through tanh.
        for i in 1..layers.len() {
            let (h, hp) = (self.widths[i + 1], self.widths[i]);
            let w_off = self.weight_offset(i);
            let w = &p[w_off..][..h * hp];
            let bias = &p[w_off + h * hp..][..h];
            let (done, cur) = tape.split_at_mut(layers[i].0);
            let a_prev = &done[layers[i - 1].0..][..rows * hp];
            let (a, rest) = cur.split_at_mut(rows * h);
            let dz = &mut rest[..k * nb * h];
            // One GEMM for the value and tangent rows; the tangent rows' pre-activations are
            // kept in the tape (dz) before tanh' overwrites them.
            gemm(
                (rows, hp, h),
                T::ONE,
                Strided::new(a_prev, hp, 1),
                Strided::new(w, 1, hp),
                T::ZERO,
                a,
                h,
            )?;
            let (vals, tans) = a.split_at_mut(nb * h);
            dz.copy_from_slice(tans);
            for (b, hrow) in vals.chunks_exact_mut(h).enumerate() {
                for (v, &bj) in hrow.iter_mut().zip(bias) {
                    *v = (*v + bj).act();
                }
                for kk in 0..k {
                    let r = (kk * nb + b) * h;
                    for (tv, &hv) in tans[r..][..h].iter_mut().zip(&*hrow) {
                        *tv = (T::ONE - hv * hv) * *tv;
                    }
                }
            }
        }

        // Output layer.
        let l = layers.len();
        let hl = self.widths[l];
        let w_off = self.weight_offset(l);
        let wo = &p[w_off..][..n_out * hl];
        let bo = &p[w_off + n_out * hl..][..n_out];
        let (done, cur) = tape.split_at_mut(zo_off);
        let a_l = &done[layers[l - 1].0..][..rows * hl];
        let zo: &mut [T] = if self.softplus {
            &mut cur[..rows * n_out]
        } else {
            &mut scratch[..rows * n_out]
        };
        if n_out == 1 {
            for (z, arow) in zo.iter_mut().zip(a_l.chunks_exact(hl)) {
                *z = dot(arow, wo);
            }
        } else {
            gemm(
                (rows, hl, n_out),
                T::ONE,
                Strided::new(a_l, hl, 1),
                Strided::new(wo, 1, hl),
                T::ZERO,
                zo,
                n_out,
            )?;
        }
        let width = self.out_width();
        for (b, orow) in out.chunks_exact_mut(width).enumerate() {
            for o in 0..n_out {
                let z = zo[b * n_out + o] + bo[o];
                if self.softplus {
                    zo[b * n_out + o] = z;
                    orow[o] = z.softplus();
                    let s = z.sigmoid();
                    for kk in 0..k {
                        orow[(1 + kk) * n_out + o] = s * zo[((1 + kk) * nb + b) * n_out + o];
                    }
                } else {
                    orow[o] = z;
                    for kk in 0..k {
                        orow[(1 + kk) * n_out + o] = zo[((1 + kk) * nb + b) * n_out + o];
                    }
                }
            }
        }
        Ok(())
    }

    /// Adds the gradients for the output gradient `gout` to `gx` (`nb × n_in`) and `gp`.
    #[inline(always)]
    fn backward(
        &self,
        tape: &[T],
        gout: &[T],
        gx: &mut [T],
        gp: &mut [T],
        scratch: &mut [T],
    ) -> candle_core::Result<()> {
        let (n_in, n_out, k) = (self.n_in(), self.n_out(), self.k());
        let nb = gx.len() / n_in;
        let rows = (1 + k) * nb;
        let p = self.params;
        let (layers, zo_off, _) = self.tape_layout(nb);
        let h_max = self.h_max();
        let h1 = self.widths[1];
        let (u, scratch) = scratch.split_at_mut(rows * h_max);
        let (u2, scratch) = scratch.split_at_mut(rows * h_max);
        let (go, scratch) = scratch.split_at_mut(rows * n_out);
        let (w1t, scratch) = scratch.split_at_mut(n_in * h1);
        let (gw1t, scratch) = scratch.split_at_mut(n_in * h1);
        let acc_buf = &mut scratch[..h_max];
        let (mut u, mut u2): (&mut [T], &mut [T]) = (u, u2);
        for j in 0..h1 {
            for c in 0..n_in {
                w1t[c * h1 + j] = p[j * n_in + c];
            }
        }
        gw1t.fill(T::ZERO);

        // The output gradient, stacked as the rows are; through softplus:
        // g_z = g_y σ(z) + Σₖ g_dyᵏ σ'(z) dzᵏ,  g_dzᵏ = g_dyᵏ σ(z),  σ' = σ (1 − σ).
        let width = self.out_width();
        for (b, grow) in gout.chunks_exact(width).enumerate() {
            for kk in 0..=k {
                for o in 0..n_out {
                    go[(kk * nb + b) * n_out + o] = grow[kk * n_out + o];
                }
            }
        }
        if self.softplus {
            let zo = &tape[zo_off..][..rows * n_out];
            for b in 0..nb {
                for o in 0..n_out {
                    let s = zo[b * n_out + o].sigmoid();
                    let ds = s * (T::ONE - s);
                    let mut gz = go[b * n_out + o] * s;
                    for kk in 1..=k {
                        let r = (kk * nb + b) * n_out + o;
                        gz += go[r] * ds * zo[r];
                        go[r] *= s;
                    }
                    go[b * n_out + o] = gz;
                }
            }
        }

        // Output layer: ∂ℓ/∂W = Goᵀ A_L, ∂ℓ/∂b = Σ value rows of Go, U = Go W.
        let l = layers.len();
        let hl = self.widths[l];
        let w_off = self.weight_offset(l);
        let wo = &p[w_off..][..n_out * hl];
        let a_l = &tape[layers[l - 1].0..][..rows * hl];
        {
            let (gw, gb) = gp[w_off..][..n_out * (hl + 1)].split_at_mut(n_out * hl);
            for grow in go[..nb * n_out].chunks_exact(n_out) {
                for (acc, &g) in gb.iter_mut().zip(grow) {
                    *acc += g;
                }
            }
            if n_out == 1 {
                for ((&g, arow), urow) in go
                    .iter()
                    .zip(a_l.chunks_exact(hl))
                    .zip(u[..rows * hl].chunks_exact_mut(hl))
                {
                    for (((acc, &av), uv), &w) in gw.iter_mut().zip(arow).zip(urow).zip(wo) {
                        *acc += g * av;
                        *uv = g * w;
                    }
                }
            } else {
                gemm(
                    (n_out, rows, hl),
                    T::ONE,
                    Strided::new(go, 1, n_out),
                    Strided::new(a_l, hl, 1),
                    T::ONE,
                    gw,
                    hl,
                )?;
                gemm(
                    (rows, n_out, hl),
                    T::ONE,
                    Strided::new(go, n_out, 1),
                    Strided::new(wo, hl, 1),
                    T::ZERO,
                    &mut u[..rows * hl],
                    hl,
                )?;
            }
        }

        // Hidden layers L … 1. U holds [g_h; g_dh¹; …] of layer i; through tanh it becomes
        // [g_z; g_dz¹; …]: g_z = s (g_h − 2 h Σₖ g_dhᵏ dzᵏ), g_dzᵏ = s g_dhᵏ, s = 1 − h².
        for i in (0..l).rev() {
            let h = self.widths[i + 1];
            let w_off = self.weight_offset(i);
            let n_prev = self.widths[i];
            let vals = &tape[layers[i].0..][..nb * h];
            {
                let gb = &mut gp[w_off + h * n_prev..][..h];
                let (gvals, gtans) = u[..rows * h].split_at_mut(nb * h);
                let acc = &mut acc_buf[..h];
                for (b, (grow, hrow)) in gvals
                    .chunks_exact_mut(h)
                    .zip(vals.chunks_exact(h))
                    .enumerate()
                {
                    // acc = Σₖ g_dhᵏ ⊙ dzᵏ, then g_dhᵏ ← s ⊙ g_dhᵏ.
                    acc.fill(T::ZERO);
                    for kk in 0..k {
                        let r = (kk * nb + b) * h;
                        let dz = if i == 0 {
                            &w1t[self.dirs[kk] * h1..][..h]
                        } else {
                            &tape[layers[i].1 + r..][..h]
                        };
                        for (((a, g), &d), &hv) in acc
                            .iter_mut()
                            .zip(gtans[r..][..h].iter_mut())
                            .zip(dz)
                            .zip(hrow)
                        {
                            *a += *g * d;
                            *g = (T::ONE - hv * hv) * *g;
                        }
                    }
                    // g_z = s (g_h − 2 h acc).
                    for (((g, &hv), &a), gbj) in
                        grow.iter_mut().zip(hrow).zip(&*acc).zip(gb.iter_mut())
                    {
                        let gz = (T::ONE - hv * hv) * (*g - T::TWO * hv * a);
                        *g = gz;
                        *gbj += gz;
                    }
                }
            }
            if i > 0 {
                let a_prev = &tape[layers[i - 1].0..][..rows * n_prev];
                let w = &p[w_off..][..h * n_prev];
                gemm(
                    (h, rows, n_prev),
                    T::ONE,
                    Strided::new(&u[..rows * h], 1, h),
                    Strided::new(a_prev, n_prev, 1),
                    T::ONE,
                    &mut gp[w_off..][..h * n_prev],
                    n_prev,
                )?;
                gemm(
                    (rows, h, n_prev),
                    T::ONE,
                    Strided::new(&u[..rows * h], h, 1),
                    Strided::new(w, n_prev, 1),
                    T::ZERO,
                    &mut u2[..rows * n_prev],
                    n_prev,
                )?;
                std::mem::swap(&mut u, &mut u2);
            } else {
                // First layer: ∂ℓ/∂W₁[:, c] = Σ_b g_z[b] X[b, c] + Σₖ [c = dₖ] Σ_b g_dzᵏ[b],
                // ∂ℓ/∂X[b, c] = g_z[b] · W₁[:, c].
                let x = &tape[..nb * n_in];
                let (gvals, gtans) = u[..rows * h].split_at(nb * h);
                for (b, grow) in gvals.chunks_exact(h).enumerate() {
                    for c in 0..n_in {
                        axpy(x[b * n_in + c], grow, &mut gw1t[c * h..][..h]);
                        gx[b * n_in + c] += dot(grow, &w1t[c * h..][..h]);
                    }
                }
                for (kk, &d) in self.dirs.iter().enumerate() {
                    for grow in gtans[kk * nb * h..][..nb * h].chunks_exact(h) {
                        for (acc, &g) in gw1t[d * h..][..h].iter_mut().zip(grow) {
                            *acc += g;
                        }
                    }
                }
                for j in 0..h {
                    for c in 0..n_in {
                        gp[j * n_in + c] += gw1t[c * h + j];
                    }
                }
            }
        }
        Ok(())
    }
}
