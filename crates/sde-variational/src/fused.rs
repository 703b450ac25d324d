//! A fused CPU kernel for the value and `∂/∂x` of a scalar field `v(x, t)` given by a tanh MLP.
//!
//! The ODE experiment (`REFERENCE.md` §1) integrates the augmented CNF state `(x, ∫∂v/∂x)` with
//! 99 RK2 steps, 198 evaluations of `(v, ∂v/∂x)` per training step, and back-propagates through
//! all of them. Built from candle ops ([`Mlp::forward_with_tangents`]) one evaluation is some
//! thirty tensor ops forward and as many backward, and per-op overhead, allocation and the C
//! library's `tanhf` cost more than the arithmetic. [`MlpValueDx`] does the whole evaluation,
//! and its backward pass, in one [`CustomOp2`]: plain loops for the element-wise work, a fast
//! vectorisable `tanh` for `f32` ([`fast_tanh`]), and `matrixmultiply`'s GEMM (AVX-512, AVX2
//! or FMA kernels chosen at run time) for the `H × H` layer products.
//!
//! # The computation
//!
//! For widths `[2, H₁, …, H_L, 1]` (`L ≥ 1` tanh hidden layers, identity output), weights
//! `Wᵢ` of shape `(out, in)` and biases `bᵢ`, a batch `x_b` and one time `t`, the forward pass
//! carries the value `h` and the tangent `dh = ∂h/∂x` of every hidden layer:
//!
//! ```text
//! z₁ = x W₁[:,0] + t W₁[:,1] + b₁        dz₁ = W₁[:,0]
//! hᵢ = tanh(zᵢ),  sᵢ = 1 − hᵢ²          dhᵢ = sᵢ ⊙ dzᵢ
//! zᵢ = hᵢ₋₁ Wᵢᵀ + bᵢ                    dzᵢ = dhᵢ₋₁ Wᵢᵀ        (i = 2 … L)
//! v  = h_L w + b_out                    ∂v/∂x = dh_L w          (w = W_{L+1}[0, :])
//! ```
//!
//! Value and tangent rows are stacked, `Aᵢ = [hᵢ; dhᵢ]` of shape `(2B, Hᵢ)`, so each hidden
//! layer is one GEMM `[zᵢ; dzᵢ] = Aᵢ₋₁ Wᵢᵀ`.
//!
//! # The backward pass (derivation)
//!
//! Given `gv_b = ∂ℓ/∂v_b` and `gd_b = ∂ℓ/∂(∂v/∂x)_b` (the two columns of `grad_res`), reverse
//! mode runs through the value *and* the tangent path. At the output,
//!
//! ```text
//! ∂ℓ/∂w = Σ_b gv_b h_L[b] + gd_b dh_L[b],   ∂ℓ/∂b_out = Σ_b gv_b,
//! g_h_L[b] = gv_b w,                        g_dh_L[b] = gd_b w.
//! ```
//!
//! Through a tanh layer, `h = tanh(z)` gives `∂h/∂z = s` and `dh = s dz` gives
//! `∂dh/∂z = −2 h s dz`, `∂dh/∂dz = s`, so with `g_h`, `g_dh` the gradients of `h`, `dh`:
//!
//! ```text
//! g_z  = s ⊙ (g_h − 2 h ⊙ g_dh ⊙ dz),       g_dz = s ⊙ g_dh.
//! ```
//!
//! Through an inner affine layer (`i ≥ 2`), with `Gᵢ = [g_zᵢ; g_dzᵢ]` `(2B, Hᵢ)` (the bias
//! enters the value rows only):
//!
//! ```text
//! ∂ℓ/∂Wᵢ = Gᵢᵀ Aᵢ₋₁ = g_zᵢᵀ hᵢ₋₁ + g_dzᵢᵀ dhᵢ₋₁,   ∂ℓ/∂bᵢ = Σ_b g_zᵢ[b],
//! [g_hᵢ₋₁; g_dhᵢ₋₁] = Gᵢ Wᵢ.
//! ```
//!
//! Through the first layer (`z₁` depends on `x`, `t` and `W₁`; `dz₁ = W₁[:,0]` on `W₁` only):
//!
//! ```text
//! ∂ℓ/∂W₁[:,0] = Σ_b (g_z₁[b] x_b + g_dz₁[b]),   ∂ℓ/∂W₁[:,1] = t Σ_b g_z₁[b],
//! ∂ℓ/∂b₁ = Σ_b g_z₁[b],                        ∂ℓ/∂x_b = g_z₁[b] · W₁[:,0].
//! ```
//!
//! The backward pass needs `hᵢ`, `dhᵢ` and `dzᵢ` (`dz` cannot be recovered from `dh` where
//! `s = 0`). The forward pass keeps them (the "tape", `(3 L − 1) B H` numbers for equal widths)
//! when the result will be differentiated, and the backward pass recomputes them otherwise.
//! Both passes are checked against candle's autograd through the unfused path and against
//! central finite differences in `tests/fused.rs`.
//!
//! # Performance
//!
//! For the 2-64-64-1 network at batch 125 in `f32`, one evaluation, forward and backward, is
//! about 6 MFLOP, three quarters of it in three `(250 × 64)·(64 × 64)`-sized GEMMs and most of
//! the rest in 16,000 `tanh`. `examples/fused_bench.rs` measures it against the unfused path.
//! Two further measures matter:
//!
//! - Batches of at least [`PARALLEL_MIN_BATCH`] rows are split in two, the second half
//!   evaluated on a helper thread that spins briefly between jobs (see [`set_parallel`]).
//!   Rows are independent, so only the order of one sum (the two halves' parameter
//!   gradients) changes; results stay reproducible.
//! - Tapes are recycled through a bounded pool instead of the allocator: a training step
//!   allocates 198 of them (about 32 MB) and frees them all in its backward pass, and the
//!   allocator returned that memory to the system every step, to fault it back in zeroed.
//!
//! Each thread also keeps one scratch buffer of the largest size it has needed (a few
//! megabytes after an 8,000-point evaluation).

use std::any::Any;
use std::cell::RefCell;
use std::ops::{Add, AddAssign, Mul, Sub};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, PoisonError};

use candle_core::{
    CpuStorage, CustomOp2, DType, Device, Layout, Shape, Storage, Tensor, WithDType,
};

use crate::error::{Error, Result};
use crate::mlp::{Activation, Mlp};

/// Whether [`value_and_dx`] can evaluate `mlp`: a CPU network of widths `[2, H₁, …, H_L, 1]`
/// with at least one hidden layer, identity output and `f32` or `f64` parameters — a scalar
/// field `v(x, t)` such as the ODE experiment's drift.
pub fn supports_fused(mlp: &Mlp) -> bool {
    let widths = &mlp.config().widths;
    mlp.device().is_cpu()
        && widths.len() >= 3
        && widths[0] == 2
        && widths[widths.len() - 1] == 1
        && mlp.config().output == Activation::Identity
        && matches!(mlp.dtype(), DType::F32 | DType::F64)
}

/// All weights and biases of `mlp` flattened and concatenated in layer order
/// `[W₁, b₁, W₂, b₂, …]` (weights row-major `(out, in)`), the `params` argument of
/// [`value_and_dx`] and [`MlpValueDx`].
///
/// Built from candle ops (`flatten_all` and `Tensor::cat`), so gradients with respect to the
/// packed vector flow back to the network's variables. Pack once per training step and pass
/// the same tensor to every evaluation of that step: each evaluation then adds one `(P,)`
/// gradient, and the split back to the variables happens once.
///
/// # Errors
/// Only candle errors.
pub fn pack_params(mlp: &Mlp) -> Result<Tensor> {
    let mut parts = Vec::with_capacity(2 * mlp.n_layers());
    for i in 0..mlp.n_layers() {
        if let (Some(w), Some(b)) = (mlp.weight(i), mlp.bias(i)) {
            parts.push(w.flatten_all()?);
            parts.push(b.clone());
        }
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// `[v(x, t), ∂v/∂x]`, shaped `(batch, 2)`, for the scalar field given by `mlp` (which must
/// satisfy [`supports_fused`]) at the points `xs[:, 0]` and the time `t`, through the fused
/// kernel [`MlpValueDx`]. `xs` is `(batch, k)` with `k ≥ 1`; columns after the first are
/// ignored, so the augmented CNF state `[x, ∫∂v/∂x]` can be passed as it is. `params` is
/// [`pack_params`]`(mlp)` (or any `(P,)` tensor of the same layout, for example detached
/// weights for evaluation).
///
/// Equal to `Mlp::forward_with_tangents(&with_time(xs, t), &[0])` up to rounding, and
/// differentiable with respect to `xs` (column 0) and `params`. The forward activations are
/// kept for the backward pass whenever `xs` or `params` is tracked by autograd; pass
/// `params.detach()` (and untracked `xs`) where no gradient is wanted, such as validation.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::VarMap;
/// use rand::{rngs::StdRng, SeedableRng};
/// use sde_variational::fused::{pack_params, value_and_dx};
/// use sde_variational::mlp::{with_time, Activation, Mlp, MlpConfig, Time};
/// # fn main() -> sde_variational::Result<()> {
/// let varmap = VarMap::new();
/// let mut rng = StdRng::seed_from_u64(0);
/// let config = MlpConfig::reference(Activation::Identity); // 2-64-64-1
/// let v = Mlp::new(&config, &varmap, "v", DType::F64, &Device::Cpu, &mut rng)?;
///
/// // The augmented CNF state [x, log-density accumulator]; only column 0 enters v.
/// let state = Tensor::new(&[[0.5f64, 0.0], [-1.0, 0.3], [2.0, -0.1]], &Device::Cpu)?;
/// let params = pack_params(&v)?;
/// let out = value_and_dx(&v, &state, &params, 0.25)?; // (3, 2): [v, ∂v/∂x]
///
/// let x = state.narrow(1, 0, 1)?;
/// let (value, dx) = v.forward_with_tangents(&with_time(&x, Time::Scalar(0.25))?, &[0])?;
/// let diff = (out.narrow(1, 1, 1)? - &dx[0])?.abs()?.max_all()?.to_scalar::<f64>()?;
/// assert!(diff < 1e-12);
///
/// // Gradients reach the network's variables through the packed vector.
/// let grads = out.sum_all()?.backward()?;
/// assert!(grads.get(v.weight(1).unwrap()).is_some());
/// # let _ = value;
/// # Ok(()) }
/// ```
///
/// # Errors
/// `mlp` not supported, or `xs`/`params` of the wrong shape, dtype or device.
pub fn value_and_dx(mlp: &Mlp, xs: &Tensor, params: &Tensor, t: f64) -> Result<Tensor> {
    if !supports_fused(mlp) {
        return Err(Error::invalid(
            "mlp",
            format!(
                "widths {:?}, {:?} output, {:?} on {:?}",
                mlp.config().widths,
                mlp.config().output,
                mlp.dtype(),
                mlp.device().location()
            ),
            "the fused kernel needs a CPU f32/f64 network [2, hidden…, 1] with identity output",
        ));
    }
    let widths = &mlp.config().widths;
    let op = MlpValueDx::new(&widths[1..widths.len() - 1], t)?;
    if !xs.device().is_cpu() || !params.device().is_cpu() {
        return Err(Error::invalid(
            "xs/params",
            format!(
                "devices {:?}/{:?}",
                xs.device().location(),
                params.device().location()
            ),
            "the fused kernel runs on the CPU only",
        ));
    }
    if xs.dtype() != mlp.dtype() || params.dtype() != mlp.dtype() {
        return Err(Error::invalid(
            "xs/params",
            format!(
                "dtypes {:?}/{:?} for a {:?} network",
                xs.dtype(),
                params.dtype(),
                mlp.dtype()
            ),
            "must match the network's dtype",
        ));
    }
    if !matches!(*xs.dims(), [_, k] if k >= 1) {
        return Err(Error::invalid(
            "xs",
            format!("shape {:?}", xs.dims()),
            "must be (batch, k) with k ≥ 1",
        ));
    }
    if params.dims() != [op.n_params()] {
        return Err(Error::invalid(
            "params",
            format!("shape {:?} for {} parameters", params.dims(), op.n_params()),
            "must be the packed (P,) vector of pack_params",
        ));
    }
    let keep = xs.track_op() || params.track_op();
    Ok(xs.apply_op2(params, op.keep_tape(keep))?)
}

/// The fused candle op behind [`value_and_dx`]: `xs` `(B, k)`, `params` `(P,)` ↦
/// `[v(xs[:, 0], t), ∂v/∂x]` `(B, 2)` for the MLP of widths `[2, hidden…, 1]` (tanh hidden
/// layers, identity output) whose weights and biases are packed in `params` as by
/// [`pack_params`]. CPU only, `f32` or `f64`; the backward pass gives the gradients with respect
/// to `xs` (column 0; the other columns get zero) and `params`. The module documentation has
/// the equations.
pub struct MlpValueDx {
    hidden: Vec<usize>,
    t: f64,
    keep: bool,
    tape: Mutex<Option<Tape>>,
}

impl std::fmt::Debug for MlpValueDx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlpValueDx")
            .field("hidden", &self.hidden)
            .field("t", &self.t)
            .field("keep_tape", &self.keep)
            .finish_non_exhaustive()
    }
}

impl MlpValueDx {
    /// The op for hidden widths `hidden = [H₁, …, H_L]` (input 2, output 1) at time `t`. It keeps
    /// its forward activations for the backward pass (see [`keep_tape`](Self::keep_tape)).
    ///
    /// # Errors
    /// No hidden layer, or a hidden width of 0.
    pub fn new(hidden: &[usize], t: f64) -> Result<Self> {
        if hidden.is_empty() || hidden.contains(&0) {
            return Err(Error::invalid(
                "hidden",
                format!("{hidden:?}"),
                "need at least one hidden layer, every width at least 1",
            ));
        }
        Ok(Self {
            hidden: hidden.to_vec(),
            t,
            keep: true,
            tape: Mutex::new(None),
        })
    }

    /// Whether the forward pass keeps its activations for the backward pass (the default)
    /// instead of the backward pass recomputing them. Keeping them saves a third of the work of
    /// a forward-and-backward evaluation and holds `(3 L − 1)·B·H` numbers per evaluation
    /// (`5 B H` for two hidden layers of `H`) until the backward pass; turn it off where the
    /// result will not be differentiated.
    ///
    /// The tape belongs to the op's latest forward pass: apply one op value once (as
    /// `apply_op2` does, taking it by value). The backward pass recomputes instead of using a
    /// tape recorded for other inputs `x`, but cannot tell other `params` apart.
    pub fn keep_tape(mut self, keep: bool) -> Self {
        self.keep = keep;
        self
    }

    /// The number of packed parameters `P = Σ out·(in + 1)` over the affine layers.
    pub fn n_params(&self) -> usize {
        let mut n = 0;
        let mut n_in = 2;
        for &h in self.hidden.iter().chain(std::iter::once(&1)) {
            n += h * (n_in + 1);
            n_in = h;
        }
        n
    }

    /// Checks `xs` `(B, k)` and `params` `(P,)`; returns `B`.
    fn check_layouts(&self, l1: &Layout, l2: &Layout) -> candle_core::Result<usize> {
        let batch = match *l1.dims() {
            [batch, k] if k >= 1 => batch,
            ref dims => candle_core::bail!("mlp_value_dx: xs must be (batch, k ≥ 1), got {dims:?}"),
        };
        if l2.dims() != [self.n_params()] {
            candle_core::bail!(
                "mlp_value_dx: params must be ({},) for hidden widths {:?}, got {:?}",
                self.n_params(),
                self.hidden,
                l2.dims()
            );
        }
        Ok(batch)
    }

    fn forward<T: Real>(
        &self,
        xs: &[T],
        l1: &Layout,
        params: &[T],
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let batch = self.check_layouts(l1, l2)?;
        let params = contiguous(params, l2);
        let t = T::from_f64(self.t);
        let split = split_point(batch);
        let b0 = split.unwrap_or(batch);
        // The second block goes to the helper thread first, with its own copies of its rows
        // and of the parameters, and runs while this thread does the first.
        let pending = split.map(|b0| {
            let mut x = vec![T::ZERO; batch - b0];
            gather_x(xs, l1, b0, &mut x);
            let (hidden, params, keep) = (self.hidden.clone(), params.to_vec(), self.keep);
            worker::submit(move || {
                let net = Net {
                    hidden: &hidden,
                    params: &params,
                    t,
                };
                net.forward_block(&x, keep)
            })
        });
        let net = Net {
            hidden: &self.hidden,
            params: &params,
            t,
        };
        let mut x = vec![T::ZERO; b0];
        gather_x(xs, l1, 0, &mut x);
        let (mut out, tape0) = net.forward_block(&x, self.keep)?;
        let mut tapes: Vec<Vec<T>> = tape0.into_iter().collect();
        if let Some(pending) = pending {
            let (out1, tape1) = pending.wait()??;
            out.extend_from_slice(&out1);
            tapes.extend(tape1);
        }
        if self.keep {
            *self.tape.lock().unwrap_or_else(PoisonError::into_inner) = Some(Tape {
                split,
                blocks: Box::new(tapes),
            });
        }
        Ok((T::to_cpu_storage_owned(out), Shape::from((batch, 2))))
    }

    /// The gradients `(B·k values of xs, P values of params)` for the contiguous `(B, 2)`
    /// output gradient `gout`.
    fn backward<T: Real>(
        &self,
        xs: &[T],
        l1: &Layout,
        params: &[T],
        l2: &Layout,
        gout: &[T],
        want_x: bool,
    ) -> candle_core::Result<(Vec<T>, Vec<T>)> {
        let batch = self.check_layouts(l1, l2)?;
        let k = l1.dims()[1];
        if gout.len() != 2 * batch {
            candle_core::bail!(
                "mlp_value_dx: output gradient of {} values for a batch of {batch}",
                gout.len()
            );
        }
        let params = contiguous(params, l2);
        let t = T::from_f64(self.t);
        // The kept tapes, if any (a second backward pass through the same graph recomputes).
        let kept = self
            .tape
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let (split, tapes) = match kept {
            Some(mut kept) => {
                let blocks = std::mem::replace(&mut kept.blocks, Box::new(()));
                match blocks.downcast::<Vec<Vec<T>>>() {
                    Ok(tapes) => (kept.split, *tapes),
                    Err(_) => (split_point(batch), Vec::new()),
                }
            }
            None => (split_point(batch), Vec::new()),
        };
        let b0 = split.unwrap_or(batch);
        let blocks: &[(usize, usize)] = match split {
            Some(b0) => &[(0, b0), (b0, batch)],
            None => &[(0, batch)],
        };
        // A tape is used only if it was recorded for these rows. Each call of `value_and_dx`
        // makes its own op, but one op applied twice through `apply_op2_arc` would otherwise
        // hand the second call's tape to the first call's backward pass.
        let recorded = {
            let net = Net {
                hidden: &self.hidden,
                params: &params,
                t,
            };
            tapes.len() == blocks.len()
                && tapes.iter().zip(blocks).all(|(tape, &(r0, r1))| {
                    tape.len() == net.tape_len(r1 - r0) && x_matches(xs, l1, r0, &tape[..r1 - r0])
                })
        };
        let mut tapes: Vec<Option<Vec<T>>> = if recorded {
            tapes.into_iter().map(Some).collect()
        } else {
            tapes.into_iter().for_each(T::recycle);
            vec![None; blocks.len()]
        };
        let pending = split.map(|b0| {
            let tape = tapes.pop().flatten();
            let mut x = Vec::new();
            if tape.is_none() {
                x = vec![T::ZERO; batch - b0];
                gather_x(xs, l1, b0, &mut x);
            }
            let gout = gout[2 * b0..].to_vec();
            let (hidden, params) = (self.hidden.clone(), params.to_vec());
            worker::submit(move || {
                let net = Net {
                    hidden: &hidden,
                    params: &params,
                    t,
                };
                let grads = net.backward_block(&x, tape.as_deref(), &gout);
                if let Some(tape) = tape {
                    T::recycle(tape);
                }
                grads
            })
        });
        let net = Net {
            hidden: &self.hidden,
            params: &params,
            t,
        };
        let tape0 = tapes.pop().flatten();
        let mut x = Vec::new();
        if tape0.is_none() {
            x = vec![T::ZERO; b0];
            gather_x(xs, l1, 0, &mut x);
        }
        let grads = net.backward_block(&x, tape0.as_deref(), &gout[..2 * b0]);
        if let Some(tape) = tape0 {
            T::recycle(tape);
        }
        let (mut gx, mut gp) = grads?;
        if let Some(pending) = pending {
            let (gx1, gp1) = pending.wait()??;
            gx.extend_from_slice(&gx1);
            for (a, b) in gp.iter_mut().zip(&gp1) {
                *a += *b;
            }
        }
        let gx = if !want_x {
            Vec::new()
        } else if k == 1 {
            gx
        } else {
            let mut full = vec![T::ZERO; batch * k];
            for (row, g) in full.chunks_exact_mut(k).zip(&gx) {
                row[0] = *g;
            }
            full
        };
        Ok((gx, gp))
    }
}

/// Batches of at least this many rows are split in two blocks evaluated on two threads (the
/// calling thread and a helper thread) when [`parallel`] is on: below it, handing work to
/// the helper costs more than it saves.
pub const PARALLEL_MIN_BATCH: usize = 48;

/// 0: not yet decided, 1: off, 2: on.
static PARALLEL: AtomicU8 = AtomicU8::new(0);

/// Turns the two-thread evaluation of large batches on or off for the whole process (on by
/// default where the machine has at least two cores). Results with and without it agree up to
/// the order of one sum in the parameter gradient; either way they are reproducible.
pub fn set_parallel(on: bool) {
    PARALLEL.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

/// Whether batches of [`PARALLEL_MIN_BATCH`] rows or more are split over two threads; see
/// [`set_parallel`].
pub fn parallel() -> bool {
    match PARALLEL.load(Ordering::Relaxed) {
        0 => {
            let on = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
            set_parallel(on);
            on
        }
        v => v == 2,
    }
}

/// Where to split a batch of `batch` rows between two threads, or `None` to run it on the
/// calling thread alone.
fn split_point(batch: usize) -> Option<usize> {
    (batch >= PARALLEL_MIN_BATCH && parallel()).then_some(batch.div_ceil(2))
}

/// One helper thread shared by all callers, for the second block of a split batch.
///
/// A job is *claimable*: the helper runs it if it gets to it first, and otherwise the caller,
/// done with its own block, takes it back and runs it itself. So a busy, descheduled or
/// sleeping helper costs at most the single-threaded time, never a wait. Between jobs the
/// helper spins for up to [`SPIN`](worker::SPIN) (`spin_loop` hints, then `yield_now` so that
/// it gives way on a loaded machine) before it blocks: during training, with calls every
/// hundred microseconds or so, it picks a job up within a microsecond instead of waking from
/// sleep (tens of microseconds in a virtual machine, which made rayon's pool a poor fit).
/// Jobs own their data, so no lifetimes cross threads.
mod worker {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
    use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
    use std::time::{Duration, Instant};

    /// How long the helper spins for the next job, and a caller for a job the helper has
    /// started, before blocking.
    pub(super) const SPIN: Duration = Duration::from_millis(1);

    /// Pure `spin_loop` spinning for this long, then `yield_now` between checks.
    const HOT: Duration = Duration::from_micros(50);

    /// A job as the helper sees it: run it unless its caller already has.
    trait Claim: Send + Sync {
        fn run(&self);
    }

    type Job<R> = Box<dyn FnOnce() -> R + Send>;

    /// The job of one split, its result, and whether the result is in.
    struct Slot<R> {
        job: Mutex<Option<Job<R>>>,
        result: Mutex<Option<R>>,
        done: AtomicBool,
        ready: Condvar,
    }

    impl<R: Send> Claim for Slot<R> {
        fn run(&self) {
            let job = self
                .job
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(job) = job {
                // A panic is caught (the helper stays alive) and leaves no result: the caller
                // gets an error.
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).ok();
                *self.result.lock().unwrap_or_else(PoisonError::into_inner) = r;
                self.done.store(true, Ordering::Release);
                self.ready.notify_all();
            }
        }
    }

    /// Where jobs go to the helper (`None` if it could not be started).
    type Queue = Sender<Arc<dyn Claim>>;

    static JOBS: OnceLock<Option<Queue>> = OnceLock::new();

    fn start() -> Option<Queue> {
        let (tx, rx) = mpsc::channel::<Arc<dyn Claim>>();
        std::thread::Builder::new()
            .name("mlp-value-dx".into())
            .spawn(move || {
                while let Some(job) = receive(&rx) {
                    job.run();
                }
            })
            .ok()
            .map(|_| tx)
    }

    /// Calls `ready` until it gives `Some`: spinning for [`HOT`], yielding until [`SPIN`],
    /// then `None` (the caller blocks).
    fn spin<M>(mut ready: impl FnMut() -> Option<M>) -> Option<M> {
        let start = Instant::now();
        let mut n = 0u32;
        loop {
            if let Some(m) = ready() {
                return Some(m);
            }
            n = n.wrapping_add(1);
            if n % 32 == 0 {
                let waited = start.elapsed();
                if waited > SPIN {
                    return None;
                }
                if waited > HOT {
                    std::thread::yield_now();
                    continue;
                }
            }
            std::hint::spin_loop();
        }
    }

    /// The next job, or `None` once no sender is left.
    fn receive(rx: &Receiver<Arc<dyn Claim>>) -> Option<Arc<dyn Claim>> {
        let polled = spin(|| match rx.try_recv() {
            Ok(job) => Some(Some(job)),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(None),
        });
        match polled {
            Some(job) => job,
            None => rx.recv().ok(),
        }
    }

    /// A submitted job; [`wait`](Pending::wait) collects its result.
    pub(super) struct Pending<R>(Arc<Slot<R>>);

    impl<R: Send + 'static> Pending<R> {
        /// The job's result: run here if the helper has not started it, else waited for. An
        /// error if the job panicked on the helper.
        pub(super) fn wait(self) -> candle_core::Result<R> {
            let slot = &self.0;
            let job = slot
                .job
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(job) = job {
                return Ok(job());
            }
            let done = || slot.done.load(Ordering::Acquire).then_some(());
            if spin(done).is_none() {
                let mut result = slot.result.lock().unwrap_or_else(PoisonError::into_inner);
                while !slot.done.load(Ordering::Acquire) {
                    result = slot
                        .ready
                        .wait(result)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
            match slot
                .result
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
            {
                Some(r) => Ok(r),
                None => candle_core::bail!("mlp_value_dx: the helper thread's job panicked"),
            }
        }
    }

    /// Offers `f` to the helper thread; [`Pending::wait`] runs it on the calling thread if the
    /// helper has not started it (or there is no helper).
    pub(super) fn submit<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Pending<R> {
        let slot = Arc::new(Slot {
            job: Mutex::new(Some(Box::new(f) as Job<R>)),
            result: Mutex::new(None),
            done: AtomicBool::new(false),
            ready: Condvar::new(),
        });
        if let Some(jobs) = JOBS.get_or_init(start) {
            let claim: Arc<dyn Claim> = slot.clone();
            // If the helper is gone, the job stays in its slot for the caller.
            let _ = jobs.send(claim);
        }
        Pending(slot)
    }
}

impl CustomOp2 for MlpValueDx {
    fn name(&self) -> &'static str {
        "mlp_value_dx"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        match (s1, s2) {
            (CpuStorage::F32(xs), CpuStorage::F32(ps)) => self.forward(xs, l1, ps, l2),
            (CpuStorage::F64(xs), CpuStorage::F64(ps)) => self.forward(xs, l1, ps, l2),
            (a, b) => candle_core::bail!(
                "mlp_value_dx: xs and params must both be f32 or both f64, got {:?} and {:?}",
                candle_core::backend::BackendStorage::dtype(a),
                candle_core::backend::BackendStorage::dtype(b)
            ),
        }
    }

    fn bwd(
        &self,
        arg1: &Tensor,
        arg2: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (want_x, want_p) = (arg1.track_op(), arg2.track_op());
        if !want_x && !want_p {
            return Ok((None, None));
        }
        let grad_res = grad_res.contiguous()?;
        match arg1.dtype() {
            DType::F32 => self.bwd_typed::<f32>(arg1, arg2, &grad_res, want_x, want_p),
            DType::F64 => self.bwd_typed::<f64>(arg1, arg2, &grad_res, want_x, want_p),
            other => candle_core::bail!("mlp_value_dx: unsupported dtype {other:?}"),
        }
    }
}

impl MlpValueDx {
    /// The backward pass in `T`, for a contiguous `grad_res`.
    fn bwd_typed<T: Real>(
        &self,
        arg1: &Tensor,
        arg2: &Tensor,
        grad_res: &Tensor,
        want_x: bool,
        want_p: bool,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (gx, gp) = {
            let (s1, l1) = arg1.storage_and_layout();
            let (s2, l2) = arg2.storage_and_layout();
            let (sg, lg) = grad_res.storage_and_layout();
            let (Storage::Cpu(s1), Storage::Cpu(s2), Storage::Cpu(sg)) = (&*s1, &*s2, &*sg) else {
                candle_core::bail!("mlp_value_dx: CPU tensors only");
            };
            let Some((g0, g1)) = lg.contiguous_offsets() else {
                candle_core::bail!("mlp_value_dx: output gradient not contiguous");
            };
            let (xs, ps) = (T::cpu_storage_as_slice(s1)?, T::cpu_storage_as_slice(s2)?);
            let g = T::cpu_storage_as_slice(sg)?;
            self.backward(xs, l1, ps, l2, &g[g0..g1], want_x)?
        };
        let gx = if want_x {
            Some(Tensor::from_vec(gx, arg1.dims(), &Device::Cpu)?)
        } else {
            None
        };
        let gp = if want_p {
            Some(Tensor::from_vec(gp, arg2.dims(), &Device::Cpu)?)
        } else {
            None
        };
        Ok((gx, gp))
    }
}

/// The kept forward activations of one evaluation: one tape per block of rows
/// (`Vec<Vec<T>>`, type-erased over the dtype) and where the batch was split.
struct Tape {
    split: Option<usize>,
    blocks: Box<dyn Any + Send>,
}

impl Drop for Tape {
    /// A tape dropped unused (its graph dropped without a backward pass) goes back to the pool.
    fn drop(&mut self) {
        if let Some(tapes) = self.blocks.downcast_mut::<Vec<Vec<f32>>>() {
            tapes.drain(..).for_each(f32::recycle);
        } else if let Some(tapes) = self.blocks.downcast_mut::<Vec<Vec<f64>>>() {
            tapes.drain(..).for_each(f64::recycle);
        }
    }
}

/// Recycled tapes are kept up to this many bytes per dtype: enough for the 198 evaluations of
/// a training step of the ODE experiment (about 32 MB).
const POOL_BYTES: usize = 64 << 20;

/// Tape buffers returned after use. A training step allocates one tape per evaluation and
/// frees them all in its backward pass; through the allocator, that memory went back to the
/// system and came back zeroed page by page every step (page faults and TLB shootdowns
/// cost more than a tenth of the step), so it is kept here instead.
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

static POOL_F32: Mutex<Pool<f32>> = Mutex::new(Pool::new());
static POOL_F64: Mutex<Pool<f64>> = Mutex::new(Pool::new());

/// The values the kernels are written for: `f32` and `f64`.
trait Real:
    WithDType + PartialOrd + Add<Output = Self> + AddAssign + Sub<Output = Self> + Mul<Output = Self>
{
    const ZERO: Self;
    const ONE: Self;
    const TWO: Self;
    /// `tanh` for the hidden layers: [`fast_tanh`] for `f32`, `f64::tanh` for `f64`.
    fn act(self) -> Self;
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
        Pool::take(&POOL_F32, len)
    }
    fn recycle(v: Vec<Self>) {
        Pool::put(&POOL_F32, v)
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const TWO: Self = 2.0;
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
        Pool::take(&POOL_F64, len)
    }
    fn recycle(v: Vec<Self>) {
        Pool::put(&POOL_F64, v)
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

/// The network as the kernels see it: hidden widths, the packed parameters, the time.
struct Net<'a, T> {
    hidden: &'a [usize],
    params: &'a [T],
    t: T,
}

impl<T: Real> Net<'_, T> {
    /// The tape of `nb` rows: `x` (nb), then per hidden layer `Aᵢ = [hᵢ; dhᵢ]` (2 nb Hᵢ) and,
    /// for `i ≥ 2`, `dzᵢ` (nb Hᵢ).
    fn tape_len(&self, nb: usize) -> usize {
        nb + self
            .hidden
            .iter()
            .enumerate()
            .map(|(i, &h)| if i == 0 { 2 * nb * h } else { 3 * nb * h })
            .sum::<usize>()
    }

    fn h_max(&self) -> usize {
        self.hidden.iter().copied().max().unwrap_or(0)
    }

    /// The scratch a backward pass needs besides the tape: two `(2 nb, H_max)` gradient
    /// buffers and three `H_max` vectors.
    fn backward_scratch_len(&self, nb: usize) -> usize {
        4 * nb * self.h_max() + 3 * self.h_max()
    }

    /// `[v, ∂v/∂x]` (`2 nb` values) for the rows `x`, and their tape if `keep` (otherwise it
    /// lives in this thread's scratch buffer and is dropped).
    fn forward_block(&self, x: &[T], keep: bool) -> candle_core::Result<(Vec<T>, Option<Vec<T>>)> {
        let nb = x.len();
        let mut out = vec![T::ZERO; 2 * nb];
        let tape_len = self.tape_len(nb);
        let fwd = self.forward_scratch_len(nb);
        if keep {
            let mut tape = T::buffer(tape_len);
            tape[..nb].copy_from_slice(x);
            T::with_scratch(fwd, |scratch| self.forward(&mut tape, &mut out, scratch))?;
            Ok((out, Some(tape)))
        } else {
            T::with_scratch(tape_len + fwd, |scratch| {
                let (tape, scratch) = scratch.split_at_mut(tape_len);
                tape[..nb].copy_from_slice(x);
                self.forward(tape, &mut out, scratch)
            })?;
            Ok((out, None))
        }
    }

    /// The gradients `(∂ℓ/∂x` (`nb`), `∂ℓ/∂params` (`P`)`)` for the rows' output gradient
    /// `gout` (`2 nb`), from their `tape`, or recomputed from their `x` without one.
    fn backward_block(
        &self,
        x: &[T],
        tape: Option<&[T]>,
        gout: &[T],
    ) -> candle_core::Result<(Vec<T>, Vec<T>)> {
        let nb = gout.len() / 2;
        let mut gx = vec![T::ZERO; nb];
        let mut gp = vec![T::ZERO; self.params.len()];
        let bwd = self.backward_scratch_len(nb);
        match tape {
            Some(tape) => T::with_scratch(bwd, |scratch| {
                self.backward(tape, gout, &mut gx, &mut gp, scratch)
            })?,
            None => {
                if x.len() != nb {
                    candle_core::bail!("mlp_value_dx: {} rows of x for {nb} gradients", x.len());
                }
                let tape_len = self.tape_len(nb);
                let scratch_len = bwd.max(self.forward_scratch_len(nb));
                T::with_scratch(tape_len + scratch_len, |scratch| {
                    let (tape, scratch) = scratch.split_at_mut(tape_len);
                    tape[..nb].copy_from_slice(x);
                    let mut out = vec![T::ZERO; 2 * nb];
                    self.forward(tape, &mut out, scratch)?;
                    self.backward(tape, gout, &mut gx, &mut gp, scratch)
                })?
            }
        }
        Ok((gx, gp))
    }

    /// The scratch a forward pass needs besides the tape: one `(2 nb, H_max)` product and two
    /// `H_max` vectors.
    fn forward_scratch_len(&self, nb: usize) -> usize {
        2 * nb * self.h_max() + 2 * self.h_max()
    }

    /// Fills the tape (whose first `nb` entries hold `x`) and `out` = `[v, ∂v/∂x]` per row;
    /// `scratch` holds at least [`forward_scratch_len`](Self::forward_scratch_len) values.
    fn forward(&self, tape: &mut [T], out: &mut [T], scratch: &mut [T]) -> candle_core::Result<()> {
        let (zbuf, small) = scratch.split_at_mut(2 * (out.len() / 2) * self.h_max());
        let nb = out.len() / 2;
        let p = self.params;
        let h1 = self.hidden[0];
        // First layer: no matmul, its input is (x, t) and its tangent the column W₁[:, 0].
        let (w0, c) = small[..2 * h1].split_at_mut(h1);
        for j in 0..h1 {
            w0[j] = p[2 * j];
            c[j] = self.t * p[2 * j + 1] + p[2 * h1 + j];
        }
        let (x, rest) = tape.split_at_mut(nb);
        let (a1, mut rest) = rest.split_at_mut(2 * nb * h1);
        {
            let (top, bottom) = a1.split_at_mut(nb * h1);
            for ((&xb, hrow), drow) in x
                .iter()
                .zip(top.chunks_exact_mut(h1))
                .zip(bottom.chunks_exact_mut(h1))
            {
                for (((h, d), &w), &cj) in hrow.iter_mut().zip(drow.iter_mut()).zip(&*w0).zip(&*c) {
                    let hv = (xb * w + cj).act();
                    *h = hv;
                    *d = (T::ONE - hv * hv) * w;
                }
            }
        }
        let mut a_prev: &[T] = a1;
        let mut h_prev = h1;
        let mut off = 3 * h1;
        for &h in &self.hidden[1..] {
            let (w, rest_p) = p[off..].split_at(h * h_prev);
            let bias = &rest_p[..h];
            off += h * (h_prev + 1);
            let z = &mut zbuf[..2 * nb * h];
            // [z; dz] = A_prev W_iᵀ: A_prev (2nb × h_prev) row-major, Wᵀ read from the (h × h_prev)
            // row-major W with strides (1, h_prev).
            gemm(
                (2 * nb, h_prev, h),
                T::ONE,
                Strided::new(a_prev, h_prev, 1),
                Strided::new(w, 1, h_prev),
                T::ZERO,
                z,
                h,
            )?;
            let (a, r) = rest.split_at_mut(2 * nb * h);
            let (dzs, r) = r.split_at_mut(nb * h);
            rest = r;
            let (top, bottom) = a.split_at_mut(nb * h);
            let (ztop, zbottom) = z.split_at(nb * h);
            for ((((hrow, drow), dzrow), zrow), dzin) in top
                .chunks_exact_mut(h)
                .zip(bottom.chunks_exact_mut(h))
                .zip(dzs.chunks_exact_mut(h))
                .zip(ztop.chunks_exact(h))
                .zip(zbottom.chunks_exact(h))
            {
                for (((((hv, dv), dzv), &zv), &dzi), &bj) in hrow
                    .iter_mut()
                    .zip(drow.iter_mut())
                    .zip(dzrow.iter_mut())
                    .zip(zrow)
                    .zip(dzin)
                    .zip(bias)
                {
                    let hh = (zv + bj).act();
                    *hv = hh;
                    *dzv = dzi;
                    *dv = (T::ONE - hh * hh) * dzi;
                }
            }
            a_prev = a;
            h_prev = h;
        }
        // Output layer: one row w and a bias.
        let w = &p[off..off + h_prev];
        let b_out = p[off + h_prev];
        let (top, bottom) = a_prev.split_at(nb * h_prev);
        for ((o, hrow), drow) in out
            .chunks_exact_mut(2)
            .zip(top.chunks_exact(h_prev))
            .zip(bottom.chunks_exact(h_prev))
        {
            o[0] = dot(hrow, w) + b_out;
            o[1] = dot(drow, w);
        }
        Ok(())
    }

    /// Adds the gradients for the output gradient `gout` (`nb` rows `[gv, gd]`) to `gx` (nb) and
    /// `gp` (P), from a filled tape.
    fn backward(
        &self,
        tape: &[T],
        gout: &[T],
        gx: &mut [T],
        gp: &mut [T],
        scratch: &mut [T],
    ) -> candle_core::Result<()> {
        let nb = gx.len();
        let p = self.params;
        let n_hidden = self.hidden.len();
        let h_max = self.h_max();
        let (u, scratch) = scratch.split_at_mut(2 * nb * h_max);
        let (u2, small) = scratch.split_at_mut(2 * nb * h_max);
        let (mut u, mut u2): (&mut [T], &mut [T]) = (u, u2);

        // Offsets of every layer's weight in `params`, and of every hidden layer's A and dz in
        // the tape.
        let mut w_off = Vec::with_capacity(n_hidden + 1);
        let mut a_off = Vec::with_capacity(n_hidden);
        let (mut po, mut to, mut n_in) = (0, nb, 2);
        for (i, &h) in self.hidden.iter().enumerate() {
            w_off.push(po);
            po += h * (n_in + 1);
            a_off.push(to);
            to += if i == 0 { 2 * nb * h } else { 3 * nb * h };
            n_in = h;
        }
        w_off.push(po);

        // Output layer.
        let hl = self.hidden[n_hidden - 1];
        let a_l = &tape[a_off[n_hidden - 1]..][..2 * nb * hl];
        {
            let w = &p[w_off[n_hidden]..][..hl];
            let (gw, gb) = gp[w_off[n_hidden]..][..hl + 1].split_at_mut(hl);
            let (top, bottom) = a_l.split_at(nb * hl);
            let (utop, ubottom) = u[..2 * nb * hl].split_at_mut(nb * hl);
            for ((((g, hrow), drow), uh), ud) in gout
                .chunks_exact(2)
                .zip(top.chunks_exact(hl))
                .zip(bottom.chunks_exact(hl))
                .zip(utop.chunks_exact_mut(hl))
                .zip(ubottom.chunks_exact_mut(hl))
            {
                let (gv, gd) = (g[0], g[1]);
                gb[0] += gv;
                for ((((acc, &hv), &dv), (uhv, udv)), &wj) in gw
                    .iter_mut()
                    .zip(hrow)
                    .zip(drow)
                    .zip(uh.iter_mut().zip(ud.iter_mut()))
                    .zip(w)
                {
                    *acc += gv * hv + gd * dv;
                    *uhv = gv * wj;
                    *udv = gd * wj;
                }
            }
        }

        // Hidden layers L … 2: through tanh, then the affine map.
        for i in (1..n_hidden).rev() {
            let (h, h_prev) = (self.hidden[i], self.hidden[i - 1]);
            let a = &tape[a_off[i]..][..2 * nb * h];
            let dzs = &tape[a_off[i] + 2 * nb * h..][..nb * h];
            let a_prev = &tape[a_off[i - 1]..][..2 * nb * h_prev];
            let g = &mut u[..2 * nb * h];
            let (gtop, gbottom) = g.split_at_mut(nb * h);
            let (gw, gb) = gp[w_off[i]..][..h * (h_prev + 1)].split_at_mut(h * h_prev);
            for (((gh, gd), hrow), dzrow) in gtop
                .chunks_exact_mut(h)
                .zip(gbottom.chunks_exact_mut(h))
                .zip(a[..nb * h].chunks_exact(h))
                .zip(dzs.chunks_exact(h))
            {
                tanh_backward_row(gh, gd, hrow, dzrow.iter().copied(), gb);
            }
            let w = &p[w_off[i]..][..h * h_prev];
            // ∂ℓ/∂Wᵢ += Gᵢᵀ A_prev: Gᵀ read from the (2nb × h) row-major G with strides (1, h).
            gemm(
                (h, 2 * nb, h_prev),
                T::ONE,
                Strided::new(g, 1, h),
                Strided::new(a_prev, h_prev, 1),
                T::ONE,
                gw,
                h_prev,
            )?;
            // [g_h_prev; g_dh_prev] = Gᵢ Wᵢ.
            gemm(
                (2 * nb, h, h_prev),
                T::ONE,
                Strided::new(g, h, 1),
                Strided::new(w, h_prev, 1),
                T::ZERO,
                &mut u2[..2 * nb * h_prev],
                h_prev,
            )?;
            std::mem::swap(&mut u, &mut u2);
        }

        // First layer: z₁ = x W₁[:,0] + t W₁[:,1] + b₁, dz₁ = W₁[:,0].
        let h1 = self.hidden[0];
        let (w0, rest) = small.split_at_mut(h1);
        let (gsum, rest) = rest.split_at_mut(h1);
        let gw0 = &mut rest[..h1];
        for j in 0..h1 {
            w0[j] = p[2 * j];
            gsum[j] = T::ZERO;
            gw0[j] = T::ZERO;
        }
        let x = &tape[..nb];
        let a1 = &tape[a_off[0]..][..2 * nb * h1];
        let (gtop, gbottom) = u[..2 * nb * h1].split_at_mut(nb * h1);
        for ((((gh, gd), hrow), &xb), gxb) in gtop
            .chunks_exact_mut(h1)
            .zip(gbottom.chunks_exact_mut(h1))
            .zip(a1[..nb * h1].chunks_exact(h1))
            .zip(x)
            .zip(gx.iter_mut())
        {
            tanh_backward_row(gh, gd, hrow, w0.iter().copied(), gsum);
            for ((acc, &gz), &gdz) in gw0.iter_mut().zip(&*gh).zip(&*gd) {
                *acc += gz * xb + gdz;
            }
            *gxb += dot(gh, w0);
        }
        for j in 0..h1 {
            gp[2 * j] += gw0[j];
            gp[2 * j + 1] += self.t * gsum[j];
            gp[2 * h1 + j] += gsum[j];
        }
        Ok(())
    }
}

/// One row of the tanh layer's backward pass, in place: `gh ← g_z = s (g_h − 2 h g_dh dz)`,
/// `gd ← g_dz = s g_dh` with `s = 1 − h²`; adds `g_z` to the bias gradient `gb`.
#[inline(always)]
fn tanh_backward_row<T: Real>(
    gh: &mut [T],
    gd: &mut [T],
    hrow: &[T],
    dz: impl Iterator<Item = T>,
    gb: &mut [T],
) {
    for ((((ghv, gdv), &hv), dzv), gbv) in gh
        .iter_mut()
        .zip(gd.iter_mut())
        .zip(hrow)
        .zip(dz)
        .zip(gb.iter_mut())
    {
        let s = T::ONE - hv * hv;
        let gdh = *gdv;
        let gz = s * (*ghv - T::TWO * hv * gdh * dzv);
        *ghv = gz;
        *gdv = s * gdh;
        *gbv += gz;
    }
}

/// `Σ aᵢ bᵢ` with eight partial sums, so the loop vectorises without reassociating floats.
#[inline]
fn dot<T: Real>(a: &[T], b: &[T]) -> T {
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

/// Copies rows `row0..row0 + x.len()` of column 0 of the `(B, k)` tensor stored in `xs` with
/// `layout` (any strides) into `x`.
fn gather_x<T: Real>(xs: &[T], layout: &Layout, row0: usize, x: &mut [T]) {
    let start = layout.start_offset() + row0 * layout.stride()[0];
    let stride = layout.stride()[0];
    for (b, v) in x.iter_mut().enumerate() {
        *v = xs[start + b * stride];
    }
}

/// Whether `x` equals rows `row0..row0 + x.len()` of column 0 of `xs` (stored with `layout`).
fn x_matches<T: Real>(xs: &[T], layout: &Layout, row0: usize, x: &[T]) -> bool {
    let start = layout.start_offset() + row0 * layout.stride()[0];
    let stride = layout.stride()[0];
    x.iter()
        .enumerate()
        .all(|(b, v)| xs[start + b * stride] == *v)
}

/// The `(P,)` parameters stored with `layout`: borrowed when contiguous, copied otherwise.
fn contiguous<'a, T: Real>(ps: &'a [T], layout: &Layout) -> std::borrow::Cow<'a, [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => std::borrow::Cow::Borrowed(&ps[a..b]),
        None => {
            let start = layout.start_offset();
            let stride = layout.stride()[0];
            std::borrow::Cow::Owned(
                (0..layout.dims()[0])
                    .map(|i| ps[start + i * stride])
                    .collect(),
            )
        }
    }
}

/// A read-only matrix in a slice: element `(i, j)` at `data[i·rs + j·cs]`.
struct Strided<'a, T> {
    data: &'a [T],
    rs: usize,
    cs: usize,
}

impl<'a, T> Strided<'a, T> {
    fn new(data: &'a [T], rs: usize, cs: usize) -> Self {
        Self { data, rs, cs }
    }
}

/// The three slices of one GEMM call, typed for `matrixmultiply`.
enum GemmSlices<'a> {
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
fn gemm<T: Real>(
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
        candle_core::bail!("mlp_value_dx: gemm strides overflow isize");
    };
    if !ok {
        candle_core::bail!("mlp_value_dx: gemm ({m}×{k})·({k}×{n}) does not fit its buffers");
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
