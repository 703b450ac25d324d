//! One fast engine for the small networks of the paper: a tanh MLP evaluated with any number of
//! forward-mode tangents, forward and backward in one candle op.
//!
//! Every model of the reference experiments trains 2-64-64-1 tanh networks with input `[x, t]`
//! (`docs/MATH.md`; paper §8), and at batch 125 such a network costs far less arithmetic than
//! candle's per-op overhead: a textbook candle graph of one evaluation with one tangent is some
//! thirty ops forward and as many backward. [`FusedMlp`] does the whole evaluation in one op:
//!
//! - rows `[x…, t]` with **one time per row** (a `(B, 1)` tensor, for the simulation-free
//!   losses) or one scalar time for the whole batch (for ODE integration);
//! - identity or softplus output, any widths `[n_in, H₁, …, H_L, n_out]` with `L ≥ 1`;
//! - the value and `K ≥ 0` forward-mode tangents `∂y/∂input_d` for chosen input coordinates
//!   `d` (`∂/∂x`, `∂/∂t`, both, or none);
//! - a hand-derived backward pass giving the gradients with respect to the inputs (`x` and a
//!   per-row `t`) and the flat parameter vector;
//! - CPU, `f32` and `f64`. Other devices use the generic candle path
//!   ([`Mlp::forward_with_tangents`]), which is also the reference the tests compare with.
//!
//! # The computation
//!
//! With `hᵢ = tanh(zᵢ)`, `sᵢ = 1 − hᵢ²` and a tangent seeded in input coordinate `d`:
//!
//! ```text
//! z₁ = X W₁ᵀ + b₁                 dz₁ = W₁[:, d]
//! hᵢ = tanh(zᵢ)                   dhᵢ = sᵢ ⊙ dzᵢ
//! zᵢ = hᵢ₋₁ Wᵢᵀ + bᵢ              dzᵢ = dhᵢ₋₁ Wᵢᵀ              (i = 2 … L)
//! z  = h_L W_outᵀ + b_out         dz  = dh_L W_outᵀ
//! y  = z  or  softplus(z)         dy  = dz  or  sigmoid(z) ⊙ dz
//! ```
//!
//! Values and the `K` tangents are stacked as `(1 + K) B` rows, so each hidden layer is one
//! GEMM (`[zᵢ; dzᵢ¹; …] = [hᵢ₋₁; dhᵢ₋₁¹; …] Wᵢᵀ`).
//!
//! # The backward pass (derivation)
//!
//! Given the gradients `g_y`, `g_dyᵏ` of the outputs, reverse mode runs through the value and
//! every tangent path. Through the softplus output, `∂dy/∂z = σ'(z) dz` with
//! `σ' = σ (1 − σ)`:
//!
//! ```text
//! g_z = σ(z) g_y + σ'(z) Σₖ g_dyᵏ dzᵏ,     g_dzᵏ = σ(z) g_dyᵏ.
//! ```
//!
//! Through a tanh layer, `∂h/∂z = s` and `dh = s dz` gives `∂dh/∂z = −2 h s dz`,
//! `∂dh/∂dz = s`:
//!
//! ```text
//! g_z = s ⊙ (g_h − 2 h ⊙ Σₖ g_dhᵏ ⊙ dzᵏ),    g_dzᵏ = s ⊙ g_dhᵏ.
//! ```
//!
//! Through an affine layer with `G = [g_z; g_dz¹; …]` and `A = [h; dh¹; …]` of the layer
//! below (the bias enters the value rows only): `∂ℓ/∂W = Gᵀ A`, `∂ℓ/∂b = Σ_b g_z[b]`, and the
//! gradient of `A` is `G W`. Through the first layer, whose tangents `dz₁ᵏ = W₁[:, dₖ]` do not
//! depend on the row: `∂ℓ/∂W₁[:, c] = Σ_b g_z[b] X[b, c] + Σₖ [c = dₖ] Σ_b g_dzᵏ[b]` and
//! `∂ℓ/∂X[b, c] = g_z[b] · W₁[:, c]`. `tests/engine.rs` checks every output and every gradient
//! against central finite differences and against candle's autograd through the generic path.
//!
//! # Performance
//!
//! The GEMMs go through `matrixmultiply` (AVX2/FMA or AVX-512 kernels chosen at run time),
//! the element-wise work is plain loops with a vectorisable `f32` tanh ([`fast_tanh`]). The
//! forward pass keeps its activations (the "tape") for the backward pass when the result will
//! be differentiated; tapes are recycled through a bounded pool per thread, so that a thread
//! reuses the memory it last wrote. Work of at least [`PARALLEL_MIN_BATCH`] rows is shared
//! between two threads ([`set_parallel`]): by rows for one network, by network where several
//! are evaluated together ([`evaluate_group`]). Rows are independent, so only the order of one
//! sum (the two threads' parameter gradients) depends on it, and results stay reproducible.

mod gemm;
pub(crate) mod kernel;
mod solve;
mod worker;

use std::any::Any;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Storage, Tensor,
};

use crate::error::{Error, Result};
use crate::mlp::{with_time, Activation, Mlp, Time};
pub use kernel::fast_tanh;
use kernel::{Net, Real};
pub use solve::solve;

/// Whether [`evaluate`] runs `mlp` through the fused op: a CPU network in `f32` or `f64` with at
/// least one hidden layer. Other networks go through the generic candle path.
pub fn supports(mlp: &Mlp) -> bool {
    mlp.device().is_cpu()
        && mlp.config().widths.len() >= 3
        && matches!(mlp.dtype(), DType::F32 | DType::F64)
}

/// The output `(B, n_out)` and, for every input coordinate in `dirs`, the tangent
/// `∂y/∂input_d` `(B, n_out)` of `mlp` (input `[x…, t]`) at the points `xs` and times `t`.
///
/// `xs` is `(B, k)` with `k ≥ n_in − 1`: its first `n_in − 1` columns are `x` (further columns
/// are ignored, so an augmented ODE state can be passed as it is). `t` is one time for the
/// batch or a `(B, 1)` tensor, one per row. Coordinate `n_in − 1` is the time.
///
/// Fused on the CPU ([`supports`]), through [`Mlp::forward_with_tangents`] elsewhere; the
/// results back-propagate to `xs`, a per-row `t` and the network's parameters either way. The
/// tangents are views of one `(B, (1 + K) n_out)` tensor (see [`evaluate`]). Several networks
/// at the same rows are one op with [`values_and_tangents`].
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::VarMap;
/// use rand::{rngs::StdRng, SeedableRng};
/// use sde_variational::engine::value_and_tangents;
/// use sde_variational::mlp::{Activation, Mlp, MlpConfig, Time};
/// # fn main() -> sde_variational::Result<()> {
/// let varmap = VarMap::new();
/// let mut rng = StdRng::seed_from_u64(0);
/// let config = MlpConfig::reference(Activation::Softplus); // 2-64-64-1, input [x, t]
/// let sigma = Mlp::new(&config, &varmap, "sigma", DType::F32, &Device::Cpu, &mut rng)?;
///
/// let x = Tensor::new(&[[0.5f32], [-1.0], [2.0]], &Device::Cpu)?;
/// let t = Tensor::new(&[[0.1f32], [0.5], [0.9]], &Device::Cpu)?; // one time per row
/// // σ(x, t) and ∂σ/∂x (coordinate 0) in one op.
/// let (value, tangents) = value_and_tangents(&sigma, &x, Time::PerSample(&t), &[0])?;
/// assert_eq!(value.dims(), &[3, 1]);
/// assert_eq!(tangents[0].dims(), &[3, 1]);
/// # Ok(()) }
/// ```
///
/// # Errors
/// Shapes or dtypes that do not fit the network, a direction `≥ n_in`.
pub fn value_and_tangents(
    mlp: &Mlp,
    xs: &Tensor,
    t: Time<'_>,
    dirs: &[usize],
) -> Result<(Tensor, Vec<Tensor>)> {
    let mut all = values_and_tangents(&[(mlp, dirs)], xs, t)?;
    all.pop().ok_or_else(|| {
        Error::invalid(
            "nets",
            "no result",
            "the engine returned nothing for one network",
        )
    })
}

/// [`value_and_tangents`] of several networks at the same rows `xs` and times `t`, each with
/// its own tangent directions, in one op where the engine runs them all ([`evaluate_group`]):
/// one `(value, tangents)` per network, in order.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::VarMap;
/// use rand::{rngs::StdRng, SeedableRng};
/// use sde_variational::engine::values_and_tangents;
/// use sde_variational::mlp::{Activation, Mlp, MlpConfig, Time};
/// # fn main() -> sde_variational::Result<()> {
/// let varmap = VarMap::new();
/// let mut rng = StdRng::seed_from_u64(0);
/// let mut net = |name: &str, out| {
///     Mlp::new(&MlpConfig::reference(out), &varmap, name, DType::F32, &Device::Cpu, &mut rng)
/// };
/// let (drift, sigma) = (net("drift", Activation::Identity)?, net("sigma", Activation::Softplus)?);
/// let x = Tensor::new(&[[0.5f32], [-1.0], [2.0]], &Device::Cpu)?;
/// let t = Tensor::new(&[[0.1f32], [0.5], [0.9]], &Device::Cpu)?;
/// // f(x, t), and σ(x, t) with ∂σ/∂x, as one op (each network on its own thread).
/// let out = values_and_tangents(&[(&drift, &[]), (&sigma, &[0])], &x, Time::PerSample(&t))?;
/// assert_eq!(out[0].1.len(), 0);
/// assert_eq!(out[1].1[0].dims(), &[3, 1]);
/// # Ok(()) }
/// ```
///
/// # Errors
/// As [`evaluate_group`].
pub fn values_and_tangents(
    nets: &[(&Mlp, &[usize])],
    xs: &Tensor,
    t: Time<'_>,
) -> Result<Vec<(Tensor, Vec<Tensor>)>> {
    if !nets.iter().all(|(mlp, _)| supports(mlp)) {
        return nets
            .iter()
            .map(|&(mlp, dirs)| {
                let n_x = mlp.in_dim().saturating_sub(1);
                let x = xs.narrow(1, 0, n_x)?;
                mlp.forward_with_tangents(&with_time(&x, t)?, dirs)
            })
            .collect();
    }
    let out = evaluate_group(nets, xs, t)?;
    let mut col = 0;
    let mut all = Vec::with_capacity(nets.len());
    for &(mlp, dirs) in nets {
        let n_out = mlp.out_dim();
        let value = out.narrow(1, col, n_out)?;
        let tangents = (0..dirs.len())
            .map(|k| out.narrow(1, col + (1 + k) * n_out, n_out))
            .collect::<candle_core::Result<Vec<_>>>()?;
        col += (1 + dirs.len()) * n_out;
        all.push((value, tangents));
    }
    Ok(all)
}

/// The fused op's raw output, `(B, (1 + K) n_out)`: each row is `[y, ∂y/∂input_{d₁}, …]`
/// (for the ODE experiment, `[v, ∂v/∂x]` is exactly the augmented CNF velocity). Arguments as
/// in [`value_and_tangents`]; CPU networks only ([`supports`]). One network of
/// [`evaluate_group`].
///
/// # Errors
/// `mlp` not supported, shapes or dtypes that do not fit, a direction `≥ n_in`.
pub fn evaluate(mlp: &Mlp, xs: &Tensor, t: Time<'_>, dirs: &[usize]) -> Result<Tensor> {
    evaluate_group(&[(mlp, dirs)], xs, t)
}

/// Several networks of one input width, each with its tangent directions, at the same rows
/// `xs` and times `t`, as one fused op: `(B, Σᵢ (1 + Kᵢ) n_outᵢ)`, each row the networks'
/// [`evaluate`] rows side by side, in order.
///
/// The paper's losses evaluate networks in pairs at the same rows (the variational process's
/// `A` and `B` at `(y, t)`, the generative SDE's drift and diffusion at `(x, t)`). As one op,
/// a pair's outputs are one tensor that a fused loss (`crate::network_elbo`) reads whole, with
/// no slicing ops and their backward passes. The two threads of a large enough batch
/// ([`set_parallel`]) share the work by its cost, in order: the first thread takes whole
/// networks while it is below half the work, then the rows of the network that crosses it,
/// the second thread the rest; two networks of equal cost each get their own thread. A value
/// row counts two units of work and a tangent row one (the GEMM is shared, the `tanh` is the
/// value row's only). Each network's block then stays on one thread from the forward pass to
/// the backward pass, with half the hand-overs of splitting each network's rows (on this VM
/// the two were within the run-to-run noise for `A` and `B` at 125 rows).
///
/// The forward pass keeps its activations for the backward pass whenever `xs`, a per-row `t`
/// or a network's parameters are tracked by autograd; evaluate [`Mlp::detached`] networks on
/// untracked inputs where no gradient is wanted.
///
/// # Errors
/// No network, a network the engine does not run ([`supports`]), networks of different input
/// widths, dtypes or devices, shapes or dtypes of `xs` or `t` that do not fit, a direction
/// `≥ n_in`.
pub fn evaluate_group(nets: &[(&Mlp, &[usize])], xs: &Tensor, t: Time<'_>) -> Result<Tensor> {
    let Some(&(first, _)) = nets.first() else {
        return Err(Error::invalid(
            "nets",
            "[]",
            "an evaluation needs at least one network",
        ));
    };
    for &(mlp, dirs) in nets {
        check_network(mlp, dirs)?;
        if mlp.in_dim() != first.in_dim() || mlp.dtype() != first.dtype() {
            return Err(Error::invalid(
                "nets",
                format!(
                    "input widths {} and {}, dtypes {:?} and {:?}",
                    first.in_dim(),
                    mlp.in_dim(),
                    first.dtype(),
                    mlp.dtype()
                ),
                "the networks of one evaluation share the input width and the dtype",
            ));
        }
    }
    let n_in = first.in_dim();
    let batch = match *xs.dims() {
        [batch, k] if k + 1 >= n_in => batch,
        ref dims => {
            return Err(Error::invalid(
                "xs",
                format!("shape {dims:?} for input width {n_in}"),
                "must be (batch, k) with k ≥ input width − 1",
            ))
        }
    };
    check_operand("xs", xs, first)?;
    let params = match nets {
        [(mlp, _)] => mlp.params().clone(),
        _ => Tensor::cat(&nets.iter().map(|(m, _)| m.params()).collect::<Vec<_>>(), 0)?,
    };
    let (mut offset, mut col) = (0, 0);
    let members = nets
        .iter()
        .map(|&(mlp, dirs)| {
            let widths = mlp.config().widths.clone();
            let member = Member {
                softplus: mlp.config().output == Activation::Softplus,
                dirs: dirs.to_vec(),
                offset,
                col,
                widths,
            };
            offset += Net::<f64>::n_params(&member.widths);
            col += (1 + dirs.len()) * mlp.out_dim();
            member
        })
        .collect();
    let mut op = FusedMlp {
        members,
        n_params: offset,
        width: col,
        time: None,
        keep: true,
        tape: Mutex::new(None),
        forward_shares: OnceLock::new(),
    };
    match t {
        Time::Scalar(t) => {
            if !t.is_finite() {
                return Err(Error::invalid("t", t, "must be finite"));
            }
            op.time = Some(t);
            op.keep = xs.track_op() || params.track_op();
            Ok(xs.apply_op2(&params, op)?)
        }
        Time::PerSample(ts) => {
            if ts.dims() != [batch, 1] || ts.dtype() != first.dtype() || !ts.device().is_cpu() {
                return Err(Error::invalid(
                    "t",
                    format!(
                        "shape {:?} dtype {:?} for a batch of {batch}",
                        ts.dims(),
                        ts.dtype()
                    ),
                    "must be (batch, 1) on the CPU in the network's dtype",
                ));
            }
            op.keep = xs.track_op() || ts.track_op() || params.track_op();
            Ok(xs.apply_op3(ts, &params, op)?)
        }
    }
}

/// Checks that the engine runs `mlp` ([`supports`]) and that every direction in `dirs` indexes
/// one of its inputs.
fn check_network(mlp: &Mlp, dirs: &[usize]) -> Result<()> {
    if !supports(mlp) {
        return Err(Error::invalid(
            "mlp",
            format!(
                "widths {:?}, {:?} on {:?}",
                mlp.config().widths,
                mlp.dtype(),
                mlp.device().location()
            ),
            "the fused engine needs a CPU f32/f64 network with at least one hidden layer",
        ));
    }
    let n_in = mlp.in_dim();
    if let Some(&d) = dirs.iter().find(|&&d| d >= n_in) {
        return Err(Error::invalid(
            "dirs",
            format!("{d} for input width {n_in}"),
            "must index an input coordinate",
        ));
    }
    Ok(())
}

/// Checks that the input `name` is a CPU tensor in `mlp`'s dtype.
fn check_operand(name: &'static str, x: &Tensor, mlp: &Mlp) -> Result<()> {
    if x.dtype() != mlp.dtype() || !x.device().is_cpu() {
        return Err(Error::invalid(
            name,
            format!("{:?} on {:?}", x.dtype(), x.device().location()),
            "must be on the CPU in the network's dtype",
        ));
    }
    Ok(())
}

/// One network of a [`FusedMlp`] op.
#[derive(Debug, Clone)]
struct Member {
    widths: Vec<usize>,
    softplus: bool,
    dirs: Vec<usize>,
    /// Where its parameters start in the op's parameter vector.
    offset: usize,
    /// Where its outputs start in an output row.
    col: usize,
}

impl Member {
    fn net<'a, T: Real>(&'a self, params: &'a [T]) -> Net<'a, T> {
        Net {
            widths: &self.widths,
            softplus: self.softplus,
            dirs: &self.dirs,
            params: &params[self.offset..][..Net::<T>::n_params(&self.widths)],
        }
    }

    /// Units of work per row: two for the value row, one per tangent row.
    fn cost(&self) -> usize {
        2 + self.dirs.len()
    }
}

/// Rows `r0..r1` of member `net`: the unit of work of one thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    net: usize,
    r0: usize,
    r1: usize,
}

/// The fused candle op behind [`evaluate_group`]: `(xs, params)` with a scalar time
/// ([`CustomOp2`]) or `(xs, ts, params)` with one time per row ([`CustomOp3`]) ↦
/// `(B, Σᵢ (1 + Kᵢ) n_outᵢ)`, `params` the networks' parameter vectors one after the other.
/// The module documentation has the equations.
pub struct FusedMlp {
    members: Vec<Member>,
    n_params: usize,
    /// Output values per row.
    width: usize,
    /// `Some(t)`: one time for the batch (the op is applied as a `CustomOp2`).
    time: Option<f64>,
    keep: bool,
    tape: Mutex<Option<Tape>>,
    /// The forward pass's pieces, which its backward passes follow (a second one recomputes,
    /// its tape used up): the same split gives the same sums whatever [`parallel`] says by
    /// then.
    forward_shares: OnceLock<Vec<Vec<Piece>>>,
}

impl std::fmt::Debug for FusedMlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FusedMlp")
            .field("members", &self.members)
            .field("time", &self.time)
            .field("keep_tape", &self.keep)
            .finish_non_exhaustive()
    }
}

/// The time input as the kernels read it.
#[derive(Clone, Copy)]
enum TimeSrc<'a, T> {
    Scalar(T),
    Column(&'a [T], &'a Layout),
}

/// The op's inputs as the kernels read them: `x` from the first `n_in − 1` columns of `xs`
/// (any strides), the time from a scalar or a `(B, 1)` column.
#[derive(Clone, Copy)]
struct Inputs<'a, T> {
    xs: &'a [T],
    xl: &'a Layout,
    time: TimeSrc<'a, T>,
    n_in: usize,
}

impl<T: Real> Inputs<'_, T> {
    /// Rows `row0..row0 + nb` as a contiguous `(nb, n_in)` block.
    fn gather(&self, row0: usize, nb: usize) -> Vec<T> {
        let (n_in, n_x) = (self.n_in, self.n_in - 1);
        let mut out = vec![T::ZERO; nb * n_in];
        let (start, rs, cs) = (
            self.xl.start_offset(),
            self.xl.stride()[0],
            self.xl.stride()[1],
        );
        for (b, row) in out.chunks_exact_mut(n_in).enumerate() {
            let base = start + (row0 + b) * rs;
            for (c, v) in row[..n_x].iter_mut().enumerate() {
                *v = self.xs[base + c * cs];
            }
            row[n_x] = match self.time {
                TimeSrc::Scalar(t) => t,
                TimeSrc::Column(ts, tl) => ts[tl.start_offset() + (row0 + b) * tl.stride()[0]],
            };
        }
        out
    }
}

/// One piece's forward pass: its outputs (`nb × (1 + K) n_out`) and, if kept, its tape.
type Block<T> = (Vec<T>, Option<Vec<T>>);

/// Forward passes of `pieces` on the inputs `xs` (one block per piece): outputs and tapes.
fn forward_pieces<T: Real>(
    members: &[Member],
    params: &[T],
    pieces: &[Piece],
    xs: &[Vec<T>],
    keep: bool,
) -> candle_core::Result<Vec<Block<T>>> {
    pieces
        .iter()
        .zip(xs)
        .map(|(p, x)| members[p.net].net(params).forward_block(x, keep))
        .collect()
}

/// Backward passes of `pieces`, accumulated: `(∂ℓ/∂X` (`batch × n_in`), `∂ℓ/∂params)`.
/// `gouts` holds each piece's output gradient as a contiguous block; used tapes go back to
/// the pool.
#[allow(clippy::too_many_arguments)]
fn backward_pieces<T: Real>(
    members: &[Member],
    params: &[T],
    pieces: &[Piece],
    xs: &[Vec<T>],
    tapes: Vec<Option<Vec<T>>>,
    gouts: &[Vec<T>],
    batch: usize,
    n_in: usize,
) -> candle_core::Result<(Vec<T>, Vec<T>)> {
    let mut gx = vec![T::ZERO; batch * n_in];
    let mut gp = vec![T::ZERO; params.len()];
    for (((p, x), tape), gout) in pieces.iter().zip(xs).zip(tapes).zip(gouts) {
        // A share holds at most one piece of each network, so its parameter gradients start
        // from zero here exactly as in a fresh buffer.
        let net = members[p.net].net(params);
        let gp_net = &mut gp[members[p.net].offset..][..net.params.len()];
        let gx_rows = &mut gx[p.r0 * n_in..p.r1 * n_in];
        net.backward_block_into(x, tape.as_deref(), gout, gx_rows, gp_net)?;
        if let Some(tape) = tape {
            T::recycle(tape);
        }
    }
    Ok((gx, gp))
}

impl FusedMlp {
    fn n_in(&self) -> usize {
        self.members[0].widths[0]
    }

    /// The pieces of each thread: one list, or two when the work is split ([`parallel`] on
    /// and at least [`PARALLEL_MIN_BATCH`] rows over all networks). The first thread takes
    /// pieces in order up to half the work (rounding rows up), the second the rest.
    fn schedule(&self, batch: usize) -> Vec<Vec<Piece>> {
        let whole = |net| Piece {
            net,
            r0: 0,
            r1: batch,
        };
        let all: Vec<Piece> = (0..self.members.len()).map(whole).collect();
        if batch == 0 || batch * self.members.len() < PARALLEL_MIN_BATCH || !parallel() {
            return vec![all];
        }
        let total: usize = self.members.iter().map(|m| m.cost() * batch).sum();
        let mut left = total as f64 / 2.0;
        let (mut first, mut second) = (Vec::new(), Vec::new());
        for (net, m) in self.members.iter().enumerate() {
            let cost = (m.cost() * batch) as f64;
            if left >= cost {
                first.push(whole(net));
                left -= cost;
            } else if left > 0.0 {
                let rows = ((left / m.cost() as f64).ceil() as usize).min(batch);
                first.push(Piece {
                    net,
                    r0: 0,
                    r1: rows,
                });
                if rows < batch {
                    second.push(Piece {
                        net,
                        r0: rows,
                        r1: batch,
                    });
                }
                left = 0.0;
            } else {
                second.push(whole(net));
            }
        }
        if second.is_empty() {
            vec![first]
        } else {
            vec![first, second]
        }
    }

    /// Checks the layouts; returns the batch size.
    fn check(&self, xl: &Layout, tl: Option<&Layout>, pl: &Layout) -> candle_core::Result<usize> {
        let n_in = self.n_in();
        let batch = match *xl.dims() {
            [batch, k] if k + 1 >= n_in => batch,
            ref dims => candle_core::bail!(
                "fused_mlp: xs must be (batch, k ≥ {}), got {dims:?}",
                n_in - 1
            ),
        };
        if let Some(tl) = tl {
            if tl.dims() != [batch, 1] {
                candle_core::bail!("fused_mlp: t must be ({batch}, 1), got {:?}", tl.dims());
            }
        }
        if pl.dims() != [self.n_params] {
            candle_core::bail!(
                "fused_mlp: params must be ({},) for {} network(s), got {:?}",
                self.n_params,
                self.members.len(),
                pl.dims()
            );
        }
        Ok(batch)
    }

    fn inputs<'a, T: Real>(
        &self,
        xs: &'a [T],
        xl: &'a Layout,
        ts: Option<(&'a [T], &'a Layout)>,
    ) -> Inputs<'a, T> {
        Inputs {
            xs,
            xl,
            time: match (ts, self.time) {
                (Some((ts, tl)), _) => TimeSrc::Column(ts, tl),
                (None, t) => TimeSrc::Scalar(T::from_f64(t.unwrap_or(0.0))),
            },
            n_in: self.n_in(),
        }
    }

    fn gather_pieces<T: Real>(&self, inputs: &Inputs<'_, T>, pieces: &[Piece]) -> Vec<Vec<T>> {
        pieces
            .iter()
            .map(|p| inputs.gather(p.r0, p.r1 - p.r0))
            .collect()
    }

    fn forward<T: Real>(
        &self,
        inputs: Inputs<'_, T>,
        batch: usize,
        params: &[T],
        pl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let params = contiguous(params, pl);
        let shares = self.schedule(batch);
        // The second share goes to the helper thread first, with its own copies of its rows
        // and of the parameters, and runs while this thread does the first.
        let pending = shares.get(1).map(|pieces| {
            let xs = self.gather_pieces(&inputs, pieces);
            let (members, pieces, params) = (self.members.clone(), pieces.clone(), params.to_vec());
            let keep = self.keep;
            worker::submit(move || forward_pieces(&members, &params, &pieces, &xs, keep))
        });
        let xs = self.gather_pieces(&inputs, &shares[0]);
        let mut results = forward_pieces(&self.members, &params, &shares[0], &xs, self.keep)?;
        if let Some(pending) = pending {
            results.extend(pending.wait()??);
        }
        let width = self.width;
        let mut out = vec![T::ZERO; batch * width];
        let mut tapes = Vec::with_capacity(results.len());
        for (p, (block, tape)) in shares.iter().flatten().zip(results) {
            let m = &self.members[p.net];
            let w = (1 + m.dirs.len()) * m.widths[m.widths.len() - 1];
            for (row, src) in out[p.r0 * width..p.r1 * width]
                .chunks_exact_mut(width)
                .zip(block.chunks_exact(w))
            {
                row[m.col..m.col + w].copy_from_slice(src);
            }
            tapes.extend(tape);
        }
        if self.keep {
            // Applied once per op value, so this is the first and only set.
            let _ = self.forward_shares.set(shares);
            *self.tape.lock().unwrap_or_else(PoisonError::into_inner) = Some(Tape {
                blocks: Box::new(tapes),
            });
        }
        Ok((
            T::to_cpu_storage_owned(out),
            Shape::from((batch, self.width)),
        ))
    }

    /// The gradients `(∂ℓ/∂X` (`B × n_in`), `∂ℓ/∂params)` for the contiguous output gradient.
    fn backward<T: Real>(
        &self,
        inputs: Inputs<'_, T>,
        batch: usize,
        params: &[T],
        pl: &Layout,
        gout: &[T],
    ) -> candle_core::Result<(Vec<T>, Vec<T>)> {
        let width = self.width;
        if gout.len() != batch * width {
            candle_core::bail!(
                "fused_mlp: output gradient of {} values for ({batch}, {width})",
                gout.len()
            );
        }
        let params = contiguous(params, pl);
        let n_in = self.n_in();
        let kept = self
            .tape
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // The forward pass's split, whether its tapes are still here or not.
        let shares = self
            .forward_shares
            .get()
            .cloned()
            .unwrap_or_else(|| self.schedule(batch));
        let tapes: Vec<Vec<T>> = match kept {
            Some(mut kept) => {
                let blocks = std::mem::replace(&mut kept.blocks, Box::new(()));
                blocks.downcast().map(|b| *b).unwrap_or_default()
            }
            None => Vec::new(),
        };
        // A tape is used only if it was recorded for these very inputs (one op value applied
        // twice would otherwise hand one call's tape to the other's backward pass).
        let xs: Vec<Vec<Vec<T>>> = shares
            .iter()
            .map(|pieces| self.gather_pieces(&inputs, pieces))
            .collect();
        let recorded = tapes.len() == shares.iter().map(Vec::len).sum::<usize>()
            && shares
                .iter()
                .flatten()
                .zip(xs.iter().flatten())
                .zip(&tapes)
                .all(|((p, x), tape)| {
                    let net = self.members[p.net].net(&params);
                    tape.len() == net.tape_len(p.r1 - p.r0) && tape[..x.len()] == x[..]
                });
        let mut tapes: Vec<Option<Vec<T>>> = if recorded {
            tapes.into_iter().map(Some).collect()
        } else {
            tapes.into_iter().for_each(T::recycle);
            shares.iter().flatten().map(|_| None).collect()
        };
        // Each piece's output gradient as a contiguous block.
        let gouts = |pieces: &[Piece]| -> Vec<Vec<T>> {
            pieces
                .iter()
                .map(|p| {
                    let m = &self.members[p.net];
                    let w = (1 + m.dirs.len()) * m.widths[m.widths.len() - 1];
                    gout[p.r0 * width..p.r1 * width]
                        .chunks_exact(width)
                        .flat_map(|row| &row[m.col..m.col + w])
                        .copied()
                        .collect()
                })
                .collect()
        };
        let mut xs = xs;
        let pending = (shares.len() == 2).then(|| {
            let pieces = shares[1].clone();
            let tapes1 = tapes.split_off(shares[0].len());
            let x = xs.pop().unwrap_or_default();
            let g = gouts(&pieces);
            let (members, params) = (self.members.clone(), params.to_vec());
            worker::submit(move || {
                backward_pieces(&members, &params, &pieces, &x, tapes1, &g, batch, n_in)
            })
        });
        let x0 = xs.pop().unwrap_or_default();
        let g0 = gouts(&shares[0]);
        let (mut gx, mut gp) = backward_pieces(
            &self.members,
            &params,
            &shares[0],
            &x0,
            tapes,
            &g0,
            batch,
            n_in,
        )?;
        if let Some(pending) = pending {
            let (gx1, gp1) = pending.wait()??;
            for (a, b) in gx.iter_mut().zip(&gx1) {
                *a += *b;
            }
            for (a, b) in gp.iter_mut().zip(&gp1) {
                *a += *b;
            }
        }
        Ok((gx, gp))
    }

    /// The backward pass in `T`: gradients for `xs` (`(B, k)`, zero past column `n_in − 2`),
    /// a per-row `ts` and `params`, each only where wanted.
    fn bwd_typed<T: Real>(
        &self,
        xs: &Tensor,
        ts: Option<&Tensor>,
        params: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (want_x, want_t, want_p) = (
            xs.track_op(),
            ts.is_some_and(Tensor::track_op),
            params.track_op(),
        );
        let grad_res = grad_res.contiguous()?;
        let (gx, gp, batch) = {
            let (sx, lx) = xs.storage_and_layout();
            let (sp, lp) = params.storage_and_layout();
            let (sg, lg) = grad_res.storage_and_layout();
            let (Storage::Cpu(sx), Storage::Cpu(sp), Storage::Cpu(sg)) = (&*sx, &*sp, &*sg) else {
                candle_core::bail!("fused_mlp: CPU tensors only");
            };
            let Some((g0, g1)) = lg.contiguous_offsets() else {
                candle_core::bail!("fused_mlp: output gradient not contiguous");
            };
            let st = ts.map(Tensor::storage_and_layout);
            let tslice: Option<(&[T], &Layout)> = match &st {
                Some((s, l)) => match &**s {
                    Storage::Cpu(s) => Some((T::cpu_storage_as_slice(s)?, l)),
                    _ => candle_core::bail!("fused_mlp: CPU tensors only"),
                },
                None => None,
            };
            let batch = self.check(lx, tslice.map(|(_, l)| l), lp)?;
            let inputs = self.inputs(T::cpu_storage_as_slice(sx)?, lx, tslice);
            let g = T::cpu_storage_as_slice(sg)?;
            let (gx, gp) =
                self.backward(inputs, batch, T::cpu_storage_as_slice(sp)?, lp, &g[g0..g1])?;
            (gx, gp, batch)
        };
        let n_in = self.n_in();
        let gxs = if want_x {
            let k = xs.dim(1)?;
            let mut full = vec![T::ZERO; batch * k];
            for (row, g) in full.chunks_exact_mut(k).zip(gx.chunks_exact(n_in)) {
                row[..n_in - 1].copy_from_slice(&g[..n_in - 1]);
            }
            Some(Tensor::from_vec(full, xs.dims(), &Device::Cpu)?)
        } else {
            None
        };
        let gts = if want_t {
            let col: Vec<T> = gx.chunks_exact(n_in).map(|g| g[n_in - 1]).collect();
            Some(Tensor::from_vec(col, (batch, 1), &Device::Cpu)?)
        } else {
            None
        };
        let gps = if want_p {
            Some(Tensor::from_vec(gp, params.dims(), &Device::Cpu)?)
        } else {
            None
        };
        Ok((gxs, gts, gps))
    }

    fn fwd_dispatch(
        &self,
        (sx, lx): (&CpuStorage, &Layout),
        ts: Option<(&CpuStorage, &Layout)>,
        (sp, lp): (&CpuStorage, &Layout),
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let batch = self.check(lx, ts.map(|(_, l)| l), lp)?;
        match (sx, sp, ts) {
            (CpuStorage::F32(x), CpuStorage::F32(p), None) => {
                self.forward(self.inputs(x, lx, None), batch, p, lp)
            }
            (CpuStorage::F64(x), CpuStorage::F64(p), None) => {
                self.forward(self.inputs(x, lx, None), batch, p, lp)
            }
            (CpuStorage::F32(x), CpuStorage::F32(p), Some((CpuStorage::F32(t), lt))) => {
                self.forward(self.inputs(x, lx, Some((t, lt))), batch, p, lp)
            }
            (CpuStorage::F64(x), CpuStorage::F64(p), Some((CpuStorage::F64(t), lt))) => {
                self.forward(self.inputs(x, lx, Some((t, lt))), batch, p, lp)
            }
            _ => candle_core::bail!("fused_mlp: inputs and params must all be f32 or all f64"),
        }
    }

    fn bwd_dispatch(
        &self,
        xs: &Tensor,
        ts: Option<&Tensor>,
        params: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if !xs.track_op() && !params.track_op() && !ts.is_some_and(Tensor::track_op) {
            return Ok((None, None, None));
        }
        match xs.dtype() {
            DType::F32 => self.bwd_typed::<f32>(xs, ts, params, grad_res),
            DType::F64 => self.bwd_typed::<f64>(xs, ts, params, grad_res),
            other => candle_core::bail!("fused_mlp: unsupported dtype {other:?}"),
        }
    }
}

impl CustomOp2 for FusedMlp {
    fn name(&self) -> &'static str {
        "fused_mlp"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if self.time.is_none() {
            candle_core::bail!("fused_mlp: a per-row time needs the three-argument op");
        }
        self.fwd_dispatch((s1, l1), None, (s2, l2))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (gx, _, gp) = self.bwd_dispatch(xs, None, params, grad_res)?;
        Ok((gx, gp))
    }
}

impl CustomOp3 for FusedMlp {
    fn name(&self) -> &'static str {
        "fused_mlp"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if self.time.is_some() {
            candle_core::bail!("fused_mlp: a scalar time needs the two-argument op");
        }
        self.fwd_dispatch((s1, l1), Some((s2, l2)), (s3, l3))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        ts: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.bwd_dispatch(xs, Some(ts), params, grad_res)
    }
}

/// The kept forward activations of one evaluation: one tape per piece, in the order of the
/// forward pass's pieces (`Vec<Vec<T>>`, type-erased over the dtype).
struct Tape {
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

/// Batches of at least this many rows are split in two blocks evaluated on two threads (the
/// calling thread and a helper thread) when [`parallel`] is on: below it, handing work to the
/// helper costs more than it saves.
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
