//! A whole fixed-grid explicit Runge–Kutta solve of an engine field as one candle op.
//!
//! [`solve`] integrates `ds/dt = F(s, t)`, where `F` is the engine's output row
//! `[y, ∂y/∂input_{d₁}, …]` of a network whose input is `[s₀ … s_{n_in−2}, t]`: the network reads
//! the first `n_in − 1` columns of the state, and the state is as wide as the output row. Two
//! fields of the paper have this shape:
//!
//! - the velocity `dx/dt = v(x, t)` (no tangent; state `x`), for sampling a flow;
//! - the augmented field of a one-dimensional continuous normalizing flow,
//!   `d/dt [x, a] = [v, ∂v/∂x]` (one tangent in `x`; the network ignores `a`), whose end state
//!   gives the exact log-likelihood (`docs/MATH.md` §3).
//!
//! Through [`OdeMethod::solve`] each stage is one fused op and each combination
//! `s + h Σ aᵢⱼ kⱼ` a few small candle ops, and a training step of the ODE experiment (99
//! midpoint steps) is some 1,200 ops with as many backward nodes; the two halves of the batch
//! meet at every evaluation. Here the rows of each half run the whole grid on their own thread
//! (rows never interact), and the backward pass is the discrete adjoint of the same method,
//! step by step in reverse, through the engine's backward kernel:
//!
//! ```text
//! forward:   uᵢ = s + h Σ_{j<i} aᵢⱼ kⱼ,   kᵢ = F(uᵢ, t + cᵢ h),   s' = s + h Σᵢ bᵢ kᵢ
//! backward:  ḡkᵢ = h bᵢ ḡs';  for i = last … first:  ḡuᵢ = ∂F/∂u(uᵢ)ᵀ ḡkᵢ,
//!            ḡs += ḡuᵢ,  ḡkⱼ += h aᵢⱼ ḡuᵢ (j < i),  ḡθ += ∂F/∂θ(uᵢ)ᵀ ḡkᵢ;   ḡs ← ḡs + ḡs'.
//! ```
//!
//! The forward arithmetic is the generic solver's, operation for operation (the same `f32` or
//! `f64` products and sums in the same order), so the end state is bit-identical to
//! [`OdeMethod::solve`] over [`evaluate`](super::evaluate); the gradients agree up to the order
//! of the sums over evaluations. `tests/engine_solve.rs` checks both, and the gradients against
//! finite differences.

use std::any::Any;
use std::sync::{Mutex, OnceLock, PoisonError};

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Storage, Tensor};
use sde_solvers::{ButcherTableau, OdeMethod, TimeGrid};

use super::kernel::{Net, Real};
use super::{check_network, check_operand, contiguous, split_point, worker};
use crate::error::{Error, Result};
use crate::mlp::{Activation, Mlp};

/// The end state of `ds/dt = F(s, t)` over `grid` by `method`, from `start` `(B, S)`, as one
/// differentiable op (see the module documentation).
///
/// `F(s, t)` is `mlp`'s output row with tangents in the input coordinates `dirs`
/// (`(1 + K) n_out` values), at the input `[s₀ … s_{n_in−2}, t]`; `S` must equal
/// `(1 + K) n_out` and be at least `n_in − 1`. The result back-propagates to `start` and to
/// the network's parameters.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::VarMap;
/// use rand::{rngs::StdRng, SeedableRng};
/// use sde_solvers::{OdeMethod, TimeGrid};
/// use sde_variational::engine;
/// use sde_variational::mlp::{Activation, Mlp, MlpConfig};
/// # fn main() -> sde_variational::Result<()> {
/// let varmap = VarMap::new();
/// let config = MlpConfig::reference(Activation::Identity); // v(x, t): 2-64-64-1
/// let v = Mlp::new(&config, &varmap, "v", DType::F64, &Device::Cpu, &mut StdRng::seed_from_u64(0))?;
/// // The augmented state [x, a] of a 1-D CNF, integrated from t = 1 to t = 0:
/// // a(0) = ∫₁⁰ ∂v/∂x dt, so log p₁(y) = log N(x(0); 0, 1) + a(0).
/// let y = Tensor::new(&[[0.5f64, 0.0], [-2.0, 0.0]], &Device::Cpu)?;
/// let grid = TimeGrid::uniform(1.0, 0.0, 99)?;
/// let end = engine::solve(&v, &y, &[0], OdeMethod::Midpoint, &grid)?;
/// assert_eq!(end.dims(), &[2, 2]);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// `mlp` not supported by the engine ([`supports`](super::supports)), a direction `≥ n_in`, a state of the
/// wrong width or dtype, a non-finite start, or a non-finite end state (the solver's
/// [`NonFinite`](sde_solvers::Error::NonFinite) error).
pub fn solve(
    mlp: &Mlp,
    start: &Tensor,
    dirs: &[usize],
    method: OdeMethod,
    grid: &TimeGrid,
) -> Result<Tensor> {
    check_network(mlp, dirs)?;
    let (n_in, n_out) = (mlp.in_dim(), mlp.out_dim());
    let width = (1 + dirs.len()) * n_out;
    match *start.dims() {
        [_, s] if s == width && s + 1 >= n_in => {}
        ref dims => {
            return Err(Error::invalid(
                "start",
                format!("shape {dims:?} for a field of {width} outputs and input width {n_in}"),
                "must be (batch, (1 + K) n_out), at least n_in − 1 wide",
            ))
        }
    }
    check_operand("start", start, mlp)?;
    if let Some(i) = sde_core::Vector::first_non_finite(start)? {
        return Err(sde_solvers::Error::NonFinite {
            t: grid.start(),
            entry: Some(i),
            hint: "",
        }
        .into());
    }
    let params = mlp.params();
    let op = FusedSolve {
        widths: mlp.config().widths.clone(),
        softplus: mlp.config().output == Activation::Softplus,
        dirs: dirs.to_vec(),
        tableau: method.tableau(),
        steps: grid.steps().collect(),
        keep: start.track_op() || params.track_op(),
        tape: Mutex::new(None),
        forward_split: OnceLock::new(),
    };
    let end = start.apply_op2(params, op)?;
    if let Some(i) = sde_core::Vector::first_non_finite(&end)? {
        return Err(sde_solvers::Error::NonFinite {
            t: grid.end(),
            entry: Some(i),
            hint: " (is the step too large for the problem?)",
        }
        .into());
    }
    Ok(end)
}

/// The op behind [`solve`]: `(start, params) ↦ end`.
struct FusedSolve {
    widths: Vec<usize>,
    softplus: bool,
    dirs: Vec<usize>,
    tableau: &'static ButcherTableau,
    steps: Vec<(f64, f64)>,
    keep: bool,
    tape: Mutex<Option<SolveTape>>,
    /// The forward pass's split, which its backward passes follow (a second one recomputes, its
    /// tapes used up): the same split gives the same sums whatever
    /// [`parallel`](super::parallel) says by then.
    forward_split: OnceLock<Option<usize>>,
}

/// What a block of rows keeps for its backward pass: its start rows (to recognise the inputs)
/// and one engine tape per evaluation, in evaluation order.
struct BlockTape<T: Real> {
    start: Vec<T>,
    evals: Vec<Vec<T>>,
}

impl<T: Real> Drop for BlockTape<T> {
    fn drop(&mut self) {
        self.evals.drain(..).for_each(T::recycle);
    }
}

/// The blocks' tapes, `Vec<BlockTape<T>>` type-erased over the dtype.
type SolveTape = Box<dyn Any + Send>;

/// Everything a thread needs to integrate a block of rows, owned so it can cross threads.
#[derive(Clone)]
struct Plan<T> {
    widths: Vec<usize>,
    softplus: bool,
    dirs: Vec<usize>,
    tableau: &'static ButcherTableau,
    steps: Vec<(f64, f64)>,
    params: Vec<T>,
}

impl<T: Real> Plan<T> {
    fn net(&self) -> Net<'_, T> {
        Net {
            widths: &self.widths,
            softplus: self.softplus,
            dirs: &self.dirs,
            params: &self.params,
        }
    }

    /// Integrates the rows `s` (`nb × S`) in place; the engine tapes of every evaluation if
    /// `keep`.
    fn forward(&self, s: &mut [T], keep: bool) -> candle_core::Result<Vec<Vec<T>>> {
        let net = self.net();
        let (n_in, width) = (net.n_in(), net.out_width());
        let nb = s.len() / width;
        let tab = self.tableau;
        let stages = tab.b.len();
        let mut ks: Vec<Vec<T>> = vec![Vec::new(); stages];
        let mut u = vec![T::ZERO; nb * width];
        let mut x = vec![T::ZERO; nb * n_in];
        let mut tapes = Vec::with_capacity(if keep { self.steps.len() * stages } else { 0 });
        for &(t, h) in &self.steps {
            for i in 0..stages {
                // uᵢ = s + Σⱼ (h aᵢⱼ) kⱼ, skipping zero weights, in the generic solver's order.
                u.copy_from_slice(s);
                for (j, &a) in tab.a[i].iter().enumerate() {
                    if a != 0.0 {
                        axpy(T::from_f64(h * a), &ks[j], &mut u);
                    }
                }
                let time = T::from_f64(t + tab.c[i] * h);
                for (row, ur) in x.chunks_exact_mut(n_in).zip(u.chunks_exact(width)) {
                    row[..n_in - 1].copy_from_slice(&ur[..n_in - 1]);
                    row[n_in - 1] = time;
                }
                let (k, tape) = net.forward_block(&x, keep)?;
                ks[i] = k;
                tapes.extend(tape);
            }
            for (k, &b) in ks.iter().zip(tab.b) {
                if b != 0.0 {
                    axpy(T::from_f64(h * b), k, s);
                }
            }
        }
        Ok(tapes)
    }

    /// The gradients `(∂ℓ/∂start` (`nb × S`), `∂ℓ/∂params)` of the block for the end state's
    /// gradient `gend`, from its evaluation tapes (recomputed from `start` when absent).
    fn backward(
        &self,
        start: &[T],
        tapes: Option<Vec<Vec<T>>>,
        gend: &[T],
    ) -> candle_core::Result<(Vec<T>, Vec<T>)> {
        let net = self.net();
        let (n_in, width) = (net.n_in(), net.out_width());
        let nb = start.len() / width;
        let tab = self.tableau;
        let stages = tab.b.len();
        let mut tapes = match tapes {
            Some(tapes) => tapes,
            None => self.forward(&mut start.to_vec(), true)?,
        };
        if tapes.len() != self.steps.len() * stages {
            candle_core::bail!(
                "fused_solve: {} tapes for {} evaluations",
                tapes.len(),
                self.steps.len() * stages
            );
        }
        let mut gs = gend.to_vec();
        let mut gp = vec![T::ZERO; self.params.len()];
        let mut gk: Vec<Vec<T>> = vec![vec![T::ZERO; nb * width]; stages];
        for &(_, h) in self.steps.iter().rev() {
            for (g, &b) in gk.iter_mut().zip(tab.b) {
                let c = T::from_f64(h * b);
                for (gv, &sv) in g.iter_mut().zip(&gs) {
                    *gv = c * sv;
                }
            }
            for i in (0..stages).rev() {
                let Some(tape) = tapes.pop() else {
                    candle_core::bail!("fused_solve: tape missing");
                };
                let (gx, gpi) = net.backward_block(&tape[..nb * n_in], Some(&tape), &gk[i])?;
                T::recycle(tape);
                for (a, &b) in gp.iter_mut().zip(&gpi) {
                    *a += b;
                }
                // ḡuᵢ is ḡx in the state's first n_in − 1 columns (the time column is not a
                // state), zero elsewhere.
                let (earlier, _) = gk.split_at_mut(i);
                for (b, gxr) in gx.chunks_exact(n_in).enumerate() {
                    for (c, &g) in gxr[..n_in - 1].iter().enumerate() {
                        gs[b * width + c] += g;
                        for (gkj, &a) in earlier.iter_mut().zip(tab.a[i]) {
                            if a != 0.0 {
                                gkj[b * width + c] += T::from_f64(h * a) * g;
                            }
                        }
                    }
                }
            }
        }
        Ok((gs, gp))
    }
}

/// `y ← y + a x`.
fn axpy<T: Real>(a: T, x: &[T], y: &mut [T]) {
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv += a * xv;
    }
}

/// Rows `r0 .. r0 + nb` of the `(B, S)` tensor data `data` with layout `l`, contiguous.
fn rows<T: Real>(data: &[T], l: &Layout, r0: usize, nb: usize) -> Vec<T> {
    let (width, rs, cs) = (l.dims()[1], l.stride()[0], l.stride()[1]);
    let mut out = Vec::with_capacity(nb * width);
    for r in r0..r0 + nb {
        let base = l.start_offset() + r * rs;
        out.extend((0..width).map(|c| data[base + c * cs]));
    }
    out
}

impl FusedSolve {
    fn plan<T: Real>(&self, params: &[T], pl: &Layout) -> candle_core::Result<Plan<T>> {
        if pl.dims() != [Net::<T>::n_params(&self.widths)] {
            candle_core::bail!(
                "fused_solve: params of shape {:?} for widths {:?}",
                pl.dims(),
                self.widths
            );
        }
        Ok(Plan {
            widths: self.widths.clone(),
            softplus: self.softplus,
            dirs: self.dirs.clone(),
            tableau: self.tableau,
            steps: self.steps.clone(),
            params: contiguous(params, pl).into_owned(),
        })
    }

    fn forward<T: Real>(
        &self,
        start: &[T],
        sl: &Layout,
        params: &[T],
        pl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let plan = self.plan(params, pl)?;
        let batch = sl.dims()[0];
        let split = split_point(batch);
        let b0 = split.unwrap_or(batch);
        let keep = self.keep;
        // The second block runs the whole grid on the helper thread.
        let pending = split.map(|b0| {
            let (plan, mut s) = (plan.clone(), rows(start, sl, b0, batch - b0));
            worker::submit(move || {
                let first = keep.then(|| s.clone());
                let tapes = plan.forward(&mut s, keep)?;
                Ok::<_, candle_core::Error>((s, first, tapes))
            })
        });
        let mut s = rows(start, sl, 0, b0);
        let first = keep.then(|| s.clone());
        let tapes = plan.forward(&mut s, keep)?;
        let mut blocks = vec![(first, tapes)];
        if let Some(pending) = pending {
            let (s1, first1, tapes1) = pending.wait()??;
            s.extend_from_slice(&s1);
            blocks.push((first1, tapes1));
        }
        if keep {
            let _ = self.forward_split.set(split);
            let blocks: Vec<BlockTape<T>> = blocks
                .into_iter()
                .map(|(start, evals)| BlockTape {
                    start: start.unwrap_or_default(),
                    evals,
                })
                .collect();
            *self.tape.lock().unwrap_or_else(PoisonError::into_inner) = Some(Box::new(blocks));
        }
        Ok((T::to_cpu_storage_owned(s), Shape::from(sl.dims())))
    }

    fn backward<T: Real>(
        &self,
        start: &Tensor,
        params: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Vec<T>, Vec<T>)> {
        let (ss, sl) = start.storage_and_layout();
        let (sp, lp) = params.storage_and_layout();
        let (sg, lg) = grad.storage_and_layout();
        let (Storage::Cpu(ss), Storage::Cpu(sp), Storage::Cpu(sg)) = (&*ss, &*sp, &*sg) else {
            candle_core::bail!("fused_solve: CPU tensors only");
        };
        let plan = self.plan(T::cpu_storage_as_slice(sp)?, lp)?;
        let start = T::cpu_storage_as_slice(ss)?;
        let gend = rows(T::cpu_storage_as_slice(sg)?, lg, 0, sl.dims()[0]);
        let (batch, width) = (sl.dims()[0], sl.dims()[1]);
        let kept = self
            .tape
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // The forward pass's split, whether its tapes are still here or not.
        let split = self
            .forward_split
            .get()
            .copied()
            .unwrap_or_else(|| split_point(batch));
        let bounds: Vec<(usize, usize)> = match split {
            Some(b0) => vec![(0, b0), (b0, batch)],
            None => vec![(0, batch)],
        };
        // A block's tapes are used only if they were recorded from these very start rows.
        let mut kept: Vec<Option<Vec<Vec<T>>>> = match kept.map(|k| k.downcast()) {
            Some(Ok(blocks)) => {
                let blocks: Vec<BlockTape<T>> = *blocks;
                blocks
                    .into_iter()
                    .zip(&bounds)
                    .map(|(mut b, &(r0, r1))| {
                        (b.start == rows(start, sl, r0, r1 - r0))
                            .then(|| std::mem::take(&mut b.evals))
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        kept.resize_with(bounds.len(), || None);
        let mut jobs: Vec<_> = bounds
            .iter()
            .zip(kept)
            .map(|(&(r0, r1), tapes)| {
                (
                    rows(start, sl, r0, r1 - r0),
                    tapes,
                    gend[r0 * width..r1 * width].to_vec(),
                )
            })
            .collect();
        let pending = (jobs.len() == 2).then(|| {
            let (s, tapes, g) = jobs.pop().unwrap_or_default();
            let plan = plan.clone();
            worker::submit(move || plan.backward(&s, tapes, &g))
        });
        let (s, tapes, g) = jobs.pop().unwrap_or_default();
        let (mut gs, mut gp) = plan.backward(&s, tapes, &g)?;
        if let Some(pending) = pending {
            let (gs1, gp1) = pending.wait()??;
            gs.extend_from_slice(&gs1);
            for (a, &b) in gp.iter_mut().zip(&gp1) {
                *a += b;
            }
        }
        Ok((gs, gp))
    }
}

impl FusedSolve {
    /// [`FusedSolve::backward`] as the tensors candle wants, where wanted.
    fn grads<T: Real>(
        &self,
        start: &Tensor,
        params: &Tensor,
        grad: &Tensor,
        want_s: bool,
        want_p: bool,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (gs, gp) = self.backward::<T>(start, params, grad)?;
        Ok((
            want_s
                .then(|| Tensor::from_vec(gs, start.dims(), &Device::Cpu))
                .transpose()?,
            want_p
                .then(|| Tensor::from_vec(gp, params.dims(), &Device::Cpu))
                .transpose()?,
        ))
    }
}

impl CustomOp2 for FusedSolve {
    fn name(&self) -> &'static str {
        "fused_solve"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        match (s1, s2) {
            (CpuStorage::F32(s), CpuStorage::F32(p)) => self.forward(s, l1, p, l2),
            (CpuStorage::F64(s), CpuStorage::F64(p)) => self.forward(s, l1, p, l2),
            _ => candle_core::bail!("fused_solve: state and params must both be f32 or f64"),
        }
    }

    fn bwd(
        &self,
        start: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (want_s, want_p) = (start.track_op(), params.track_op());
        if !want_s && !want_p {
            return Ok((None, None));
        }
        match start.dtype() {
            DType::F32 => self.grads::<f32>(start, params, grad, want_s, want_p),
            DType::F64 => self.grads::<f64>(start, params, grad, want_s, want_p),
            other => candle_core::bail!("fused_solve: unsupported dtype {other:?}"),
        }
    }
}
