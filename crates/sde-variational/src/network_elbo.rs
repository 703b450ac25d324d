//! The SDE ELBO of the paper's SDE model — the network Gaussian process
//! ([`NetworkGaussian`]), a [`NeuralSde`] and the likelihood `N(y; x₁, β₁²)` that shares
//! `q₁`'s width (`docs/REFERENCE.md` §2) — as three engine evaluations and three fused
//! element-wise ops.
//!
//! Through the generic path ([`sde_elbo`]) one training step of that model is some seventy
//! candle ops on `(B, 1)` columns besides the six network evaluations, and candle's per-op
//! cost (about half a microsecond forward and two to three backward, where each gradient is
//! accumulated into a fresh zero tensor) does not shrink with the batch: a whole step at batch
//! 16, mostly that overhead, took 462 µs through the generic path and 286 µs through this one
//! (one thread, same run). Here the same terms take eight ops, two of them for the
//! reconstruction term, which is a constant per batch:
//!
//! ```text
//! [A, ∂A/∂t, B̃, ∂B̃/∂t]  = engine(A, B at (y, t), ∂/∂t)          B̃ = softplus(B)
//! [A₀, B̃₀]               = engine(A, B at (y, 0))
//! [x, v, s]              = head(…, log β₁)     α = t y + (1 − t) A,  β = t β₁ + (1 − t) B̃,
//!                          x = α + β ε,  v = ∂α/∂t + ∂β/∂t ε,  s = −ε/β   (docs/MATH.md §5)
//! [f, σ, ∂σ/∂x]          = engine(f, σ at (x, t), ∂/∂x)
//! diffusion              = (f − f_q)² / 2σ²,   f_q = v + σ ∂σ/∂x + ½ σ² s   (½ ∂σ²/∂x = σ ∂σ/∂x)
//! prior_kl               = ½ (A₀² + B̃₀² − 1 − log B̃₀²)
//! reconstruction         = −½ − ½ log 2π − log β₁                  (q₁ = N(y, β₁²), δ = β₁)
//! ```
//!
//! Each element-wise op has a hand-derived backward pass (in its documentation), computed in
//! `f64` whatever the networks' dtype. [`network_gaussian_elbo`] falls back to [`sde_elbo`]
//! where the engine does not run the networks, and `tests/network_elbo.rs` checks the terms and
//! every parameter's gradient against that generic path and against finite differences.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};

use crate::elbo::{diffusion_term, sde_elbo, ElboTerms};
use crate::engine::{evaluate_group, supports};
use crate::error::{Error, Result};
use crate::likelihood::GaussianLikelihood;
use crate::mlp::Time;
use crate::neural_sde::NeuralSde;
use crate::process::{NetworkGaussian, LN_2PI};

/// The SDE ELBO's terms per row for the paper's SDE model: the variational process `process`,
/// the generative SDE `sde`, the likelihood `N(y; x₁, β₁²)` with `process`'s `β₁`, data `y`
/// `(B, 1)` and the drift-matching term at the rows' times `t` and noises `eps` `(B, 1)`.
///
/// The same terms as [`sde_elbo`] with a [`GaussianLikelihood`] of width `process.beta1()`,
/// computed with fused ops where the engine runs all four networks (CPU, `f32`/`f64`) and by
/// [`sde_elbo`] otherwise.
///
/// # Errors
/// `y` not `(B, 1)`, `t` or `eps` not shaped like it or not in the networks' dtype, the
/// networks' and the errors of [`sde_elbo`].
pub fn network_gaussian_elbo(
    process: &NetworkGaussian,
    sde: &NeuralSde,
    y: &Tensor,
    t: &Tensor,
    eps: &Tensor,
) -> Result<ElboTerms> {
    if !fused(process, sde) {
        let likelihood = GaussianLikelihood::new(process.beta1()?)?;
        return sde_elbo(process, sde, y, t, eps, &likelihood);
    }
    let batch = check_rows(process, y, t, eps)?;
    let (a, b) = (process.a(), process.b());
    let g_0 = evaluate_group(&[(a, &[]), (b, &[])], y, Time::Scalar(0.0))?;
    let reconstruction = process
        .log_beta1()
        .affine(-1.0, -0.5 * (1.0 + LN_2PI))?
        .broadcast_as((batch, 1))?;
    Ok(ElboTerms {
        reconstruction,
        prior_kl: g_0.apply_op1(PriorKl)?,
        diffusion: fused_diffusion(process, sde, y, t, eps)?,
    })
}

/// The drift-matching term `(f − f_q)² / 2σ²` alone, per row, as in [`network_gaussian_elbo`]
/// (fused where the engine runs the networks, [`diffusion_term`] otherwise): what a many-draw
/// estimate of the ELBO evaluates once per draw.
///
/// # Errors
/// As [`network_gaussian_elbo`].
pub fn network_gaussian_diffusion(
    process: &NetworkGaussian,
    sde: &NeuralSde,
    y: &Tensor,
    t: &Tensor,
    eps: &Tensor,
) -> Result<Tensor> {
    if !fused(process, sde) {
        return diffusion_term(process, sde, y, t, eps);
    }
    check_rows(process, y, t, eps)?;
    fused_diffusion(process, sde, y, t, eps)
}

/// Whether the engine runs all four networks.
fn fused(process: &NetworkGaussian, sde: &NeuralSde) -> bool {
    [process.a(), process.b(), sde.drift_net(), sde.sigma_net()]
        .iter()
        .all(|n| supports(n))
}

/// [`check_rows`](crate::elbo::check_rows), and `y`, `t`, `eps` in the networks' dtype; the batch.
fn check_rows(process: &NetworkGaussian, y: &Tensor, t: &Tensor, eps: &Tensor) -> Result<usize> {
    let batch = crate::elbo::check_rows(y, t, eps)?;
    let dtype = process.a().dtype();
    for (name, v) in [("y", y), ("t", t), ("eps", eps)] {
        if v.dtype() != dtype {
            return Err(Error::invalid(
                name,
                format!("dtype {:?}", v.dtype()),
                "must be in the networks' dtype",
            ));
        }
    }
    Ok(batch)
}

/// `[A, ∂A/∂t, B̃, ∂B̃/∂t]` at `(y, t)`, the head, `[f, σ, ∂σ/∂x]` at `(x, t)`, the matching.
fn fused_diffusion(
    process: &NetworkGaussian,
    sde: &NeuralSde,
    y: &Tensor,
    t: &Tensor,
    eps: &Tensor,
) -> Result<Tensor> {
    let (a, b) = (process.a(), process.b());
    let g_t = evaluate_group(&[(a, &[1]), (b, &[1])], y, Time::PerSample(t))?;
    let head = Head {
        y: values(y)?,
        t: values(t)?,
        eps: values(eps)?,
    };
    let h = g_t.apply_op2(process.log_beta1(), head)?;
    let fs = evaluate_group(
        &[(sde.drift_net(), &[]), (sde.sigma_net(), &[0])],
        &h,
        Time::PerSample(t),
    )?;
    Ok(h.apply_op2(&fs, Matching)?)
}

/// The marginal's head: `(G, log β₁)` ↦ `[x, v, s]` per row, from the engine's
/// `G = [A, ∂A/∂t, B̃, ∂B̃/∂t]` at `(y, t)` and the rows' constants `y`, `t`, `ε`:
///
/// ```text
/// α = t y + (1 − t) A            ∂α/∂t = y − A + (1 − t) ∂A/∂t        x = α + β ε
/// β = t β₁ + (1 − t) B̃           ∂β/∂t = β₁ − B̃ + (1 − t) ∂B̃/∂t       v = ∂α/∂t + ∂β/∂t ε,  s = −ε/β
/// ```
///
/// Backward, for output gradients `(g_x, g_v, g_s)`: `g_α = g_x`, `g_β = g_x ε + g_s ε/β²`,
/// `g_∂α = g_v`, `g_∂β = g_v ε`; then `g_A = (1 − t) g_α − g_∂α`, `g_∂A = (1 − t) g_∂α`, the
/// same for `B̃` with `β`, and `∂ℓ/∂log β₁ = β₁ Σ_rows (t g_β + g_∂β)`.
struct Head {
    y: Vec<f64>,
    t: Vec<f64>,
    eps: Vec<f64>,
}

impl Head {
    /// Per row: `(α, β, ∂α/∂t, ∂β/∂t)` for the engine row `g` and `β₁`.
    fn marginal(&self, i: usize, g: &[f64], beta1: f64) -> (f64, f64, f64, f64) {
        let (y, t) = (self.y[i], self.t[i]);
        let omt = 1.0 - t;
        (
            t * y + omt * g[0],
            t * beta1 + omt * g[2],
            y - g[0] + omt * g[1],
            beta1 - g[2] + omt * g[3],
        )
    }
}

impl CustomOp2 for Head {
    fn name(&self) -> &'static str {
        "network_gaussian_head"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let batch = self.y.len();
        if l1.dims() != [batch, 4] || l2.dims() != [1, 1] {
            candle_core::bail!(
                "network_gaussian_head: ({batch}, 4) and (1, 1) expected, got {:?} and {:?}",
                l1.dims(),
                l2.dims()
            );
        }
        let g = storage_f64(s1, l1)?;
        let beta1 = storage_f64(s2, l2)?[0].exp();
        let mut out = Vec::with_capacity(3 * batch);
        for (i, row) in g.chunks_exact(4).enumerate() {
            let eps = self.eps[i];
            let (alpha, beta, da, db) = self.marginal(i, row, beta1);
            out.extend([alpha + beta * eps, da + db * eps, -eps / beta]);
        }
        Ok((storage_of(out, s1.dtype())?, Shape::from((batch, 3))))
    }

    fn bwd(
        &self,
        g_t: &Tensor,
        log_beta1: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (g, gout) = (values(g_t)?, values(grad_res)?);
        let beta1 = values(log_beta1)?[0].exp();
        let mut grad_g = Vec::with_capacity(g.len());
        let mut grad_beta1 = 0.0;
        for (i, (row, go)) in g.chunks_exact(4).zip(gout.chunks_exact(3)).enumerate() {
            let (eps, omt) = (self.eps[i], 1.0 - self.t[i]);
            let (_, beta, _, _) = self.marginal(i, row, beta1);
            let g_alpha = go[0];
            let g_beta = go[0] * eps + go[2] * eps / (beta * beta);
            let (g_da, g_db) = (go[1], go[1] * eps);
            grad_g.extend([
                omt * g_alpha - g_da,
                omt * g_da,
                omt * g_beta - g_db,
                omt * g_db,
            ]);
            grad_beta1 += self.t[i] * g_beta + g_db;
        }
        Ok((
            tracked(g_t, grad_g)?,
            tracked(log_beta1, vec![beta1 * grad_beta1])?,
        ))
    }
}

/// The drift-matching integrand `(f − f_q)² / 2σ²` per row from the head's `[x, v, s]` and the
/// engine's `[f, σ, ∂σ/∂x]` at `(x, t)`, with `f_q = v + σ ∂σ/∂x + ½ σ² s` (the forward SDE
/// drift of eq. 38 with `½ ∂σ²/∂x = σ ∂σ/∂x`).
///
/// Backward, for `r = f − f_q` and output gradient `g`: `g_f = g r/σ²`; with `q = −g r/σ²`,
/// `g_v = q`, `g_s = ½ σ² q`, `g_∂σ = σ q`, `g_σ = (∂σ/∂x + σ s) q − g r²/σ³`; `x` enters only
/// through the engine, so `g_x = 0` here.
struct Matching;

impl Matching {
    /// `r = f − f_q` of one row.
    fn residual(h: &[f64], fs: &[f64]) -> f64 {
        let (v, s) = (h[1], h[2]);
        let (f, sigma, ds) = (fs[0], fs[1], fs[2]);
        f - (v + sigma * ds + 0.5 * sigma * sigma * s)
    }
}

impl CustomOp2 for Matching {
    fn name(&self) -> &'static str {
        "drift_matching"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let batch = l1.dims()[0];
        if l1.dims() != [batch, 3] || l2.dims() != [batch, 3] {
            candle_core::bail!(
                "drift_matching: two (batch, 3) inputs expected, got {:?} and {:?}",
                l1.dims(),
                l2.dims()
            );
        }
        let (h, fs) = (storage_f64(s1, l1)?, storage_f64(s2, l2)?);
        let out = h
            .chunks_exact(3)
            .zip(fs.chunks_exact(3))
            .map(|(h, fs)| {
                let r = Self::residual(h, fs);
                r * r / (2.0 * fs[1] * fs[1])
            })
            .collect();
        Ok((storage_of(out, s1.dtype())?, Shape::from((batch, 1))))
    }

    fn bwd(
        &self,
        h_t: &Tensor,
        fs_t: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (h, fs, gout) = (values(h_t)?, values(fs_t)?, values(grad_res)?);
        let mut grad_h = Vec::with_capacity(h.len());
        let mut grad_fs = Vec::with_capacity(fs.len());
        for ((h, fs), &g) in h.chunks_exact(3).zip(fs.chunks_exact(3)).zip(&gout) {
            let r = Self::residual(h, fs);
            let (sigma, ds, s) = (fs[1], fs[2], h[2]);
            let s2 = sigma * sigma;
            let q = -g * r / s2;
            grad_h.extend([0.0, q, 0.5 * s2 * q]);
            grad_fs.extend([
                g * r / s2,
                (ds + sigma * s) * q - g * r * r / (s2 * sigma),
                sigma * q,
            ]);
        }
        Ok((tracked(h_t, grad_h)?, tracked(fs_t, grad_fs)?))
    }
}

/// `KL(N(A₀, B̃₀²) ‖ N(0, 1)) = ½ (A₀² + B̃₀² − 1 − log B̃₀²)` per row from the engine's
/// `[A₀, B̃₀]` at `(y, 0)` (`α = A`, `β = B̃` at t = 0). Backward: `g_A₀ = g A₀`,
/// `g_B̃₀ = g (B̃₀ − 1/B̃₀)`.
struct PriorKl;

impl CustomOp1 for PriorKl {
    fn name(&self) -> &'static str {
        "gaussian_prior_kl"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let batch = l.dims()[0];
        if l.dims() != [batch, 2] {
            candle_core::bail!("gaussian_prior_kl: (batch, 2) expected, got {:?}", l.dims());
        }
        let out = storage_f64(s, l)?
            .chunks_exact(2)
            .map(|r| 0.5 * (r[0] * r[0] + r[1] * r[1] - 1.0) - r[1].ln())
            .collect();
        Ok((storage_of(out, s.dtype())?, Shape::from((batch, 1))))
    }

    fn bwd(
        &self,
        g_0: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (g, gout) = (values(g_0)?, values(grad_res)?);
        let grad = g
            .chunks_exact(2)
            .zip(&gout)
            .flat_map(|(r, &go)| [go * r[0], go * (r[1] - 1.0 / r[1])])
            .collect();
        tracked(g_0, grad)
    }
}

/// A storage's values as `f64`, in the row-major order of its (2-D) layout.
fn storage_f64(s: &CpuStorage, l: &Layout) -> candle_core::Result<Vec<f64>> {
    let &[rows, cols] = l.dims() else {
        candle_core::bail!("network_elbo: 2-D tensors only, got {:?}", l.dims());
    };
    let (start, rs, cs) = (l.start_offset(), l.stride()[0], l.stride()[1]);
    let index = (0..rows).flat_map(move |i| (0..cols).map(move |j| start + i * rs + j * cs));
    Ok(match s {
        CpuStorage::F32(v) => index.map(|i| f64::from(v[i])).collect(),
        CpuStorage::F64(v) => index.map(|i| v[i]).collect(),
        _ => candle_core::bail!("network_elbo: f32 or f64 storage only"),
    })
}

/// `values` stored in `dtype`.
fn storage_of(values: Vec<f64>, dtype: DType) -> candle_core::Result<CpuStorage> {
    Ok(match dtype {
        #[allow(clippy::cast_possible_truncation)]
        DType::F32 => CpuStorage::F32(values.into_iter().map(|v| v as f32).collect()),
        DType::F64 => CpuStorage::F64(values),
        other => candle_core::bail!("network_elbo: unsupported dtype {other:?}"),
    })
}

/// A CPU tensor's values as `f64`, row-major.
fn values(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    let (s, l) = t.storage_and_layout();
    match &*s {
        candle_core::Storage::Cpu(s) => storage_f64(s, l),
        _ => candle_core::bail!("network_elbo: CPU tensors only"),
    }
}

/// The gradient `grad` for `arg` (its shape and dtype), or `None` if `arg` is not tracked.
fn tracked(arg: &Tensor, grad: Vec<f64>) -> candle_core::Result<Option<Tensor>> {
    if !arg.track_op() {
        return Ok(None);
    }
    let device = &candle_core::Device::Cpu;
    Ok(Some(match arg.dtype() {
        #[allow(clippy::cast_possible_truncation)]
        DType::F32 => Tensor::from_vec(
            grad.into_iter().map(|v| v as f32).collect::<Vec<f32>>(),
            arg.dims(),
            device,
        )?,
        _ => Tensor::from_vec(grad, arg.dims(), device)?,
    }))
}
