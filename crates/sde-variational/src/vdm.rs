//! The variational diffusion model (`docs/MATH.md` §6; paper §7.1) as a parameterisation of the
//! SDE ELBO: a variance-preserving Gaussian process with a learnable linear log-SNR schedule,
//! and a generative drift that is the variational forward drift with the data point replaced
//! by a signal prediction `ŷ(x, t)`. Nothing here re-derives an ELBO term: [`crate::sde_elbo`]
//! with [`VpSchedule`] and [`VdmSde`] is the VDM ELBO.
//!
//! ```text
//! λ(t) = (1 − t) λ₀ + t λ₁,   a_t² = sigmoid(λ),   b_t² = sigmoid(−λ),   a² + b² = 1
//! σ²(t) = (λ₁ − λ₀) b_t²,      ȧ = a σ²/2,          ḃ = −a² σ² / (2 b)
//! q_t(x | y) = N(a_t y, b_t²),  f(x, t) = f_q(x, ŷ(x, t), t),  ŷ = x + M(x, t)
//! ```
//!
//! so that `f − f_q = (a σ² / b²)(ŷ − y)` and the drift-matching integrand is
//! `½ SNR'(t) (y − ŷ)²` with `SNR' = (λ₁ − λ₀) SNR` ([`drift_matching_closed_form`], which the
//! tests compare with the general code).

use candle_core::{DType, Device, Tensor, Var};

use crate::elbo::GenerativeSde;
use crate::engine::value_and_tangents;
use crate::error::{Error, Result};
use crate::mlp::{Mlp, Time};
use crate::process::{DiffusionAt, FlowMarginal, GaussianMarginal, VariationalProcess};

/// The variance-preserving process with the linear log-SNR schedule `λ(t) = (1 − t) λ₀ + t λ₁`:
/// `q_t(x | y) = N(a_t y, b_t²)`, `a_t² = sigmoid(λ)`, `b_t² = sigmoid(−λ)`. The endpoints are
/// tensors (learnable when they are [`Var`]s), `(1, 1)` each.
#[derive(Debug, Clone)]
pub struct VpSchedule {
    lambda0: Tensor,
    lambda1: Tensor,
}

impl VpSchedule {
    /// The schedule between `lambda0` (t = 0, the prior end) and `lambda1` (t = 1, the data
    /// end), `(1, 1)` tensors of one dtype.
    ///
    /// # Errors
    /// Shapes other than `(1, 1)`, dtypes that differ.
    pub fn new(lambda0: Tensor, lambda1: Tensor) -> Result<Self> {
        for (name, l) in [("lambda0", &lambda0), ("lambda1", &lambda1)] {
            if l.dims() != [1, 1] || l.dtype() != lambda0.dtype() {
                return Err(Error::invalid(
                    name,
                    format!("shape {:?} dtype {:?}", l.dims(), l.dtype()),
                    "must be (1, 1), both in one dtype",
                ));
            }
        }
        Ok(Self { lambda0, lambda1 })
    }

    /// Two `(1, 1)` variables holding `lambda0 < lambda1` (the reference: −5 and 5).
    ///
    /// # Errors
    /// Non-finite endpoints or `lambda0 ≥ lambda1` (the SNR must grow towards the data).
    pub fn vars(lambda0: f64, lambda1: f64, dtype: DType, device: &Device) -> Result<(Var, Var)> {
        if !(lambda0.is_finite() && lambda1.is_finite() && lambda0 < lambda1) {
            return Err(Error::invalid(
                "lambda",
                format!("({lambda0}, {lambda1})"),
                "need finite endpoints with lambda0 < lambda1",
            ));
        }
        let var = |v: f64| -> Result<Var> {
            Ok(Var::from_tensor(
                &Tensor::full(v, (1, 1), device)?.to_dtype(dtype)?,
            )?)
        };
        Ok((var(lambda0)?, var(lambda1)?))
    }

    /// The endpoints `(λ₀, λ₁)`.
    pub fn endpoints(&self) -> (&Tensor, &Tensor) {
        (&self.lambda0, &self.lambda1)
    }

    /// A copy that builds no gradient graph.
    pub fn detached(&self) -> Self {
        Self {
            lambda0: self.lambda0.detach(),
            lambda1: self.lambda1.detach(),
        }
    }

    /// `λ(t)` for `t` a scalar or a `(B, 1)` column, as a tensor broadcastable to `(B, 1)`.
    fn lambda(&self, t: Time<'_>) -> Result<Tensor> {
        let slope = (&self.lambda1 - &self.lambda0)?;
        Ok(match t {
            Time::Scalar(t) => (&self.lambda0 + slope.affine(t, 0.0)?)?,
            Time::PerSample(ts) => ts.broadcast_mul(&slope)?.broadcast_add(&self.lambda0)?,
        })
    }

    /// `(a_t, b_t, σ²(t))` at `t`, each broadcastable to `(B, 1)`.
    pub fn coefficients(&self, t: Time<'_>) -> Result<(Tensor, Tensor, Tensor)> {
        let lambda = self.lambda(t)?;
        let a2 = candle_nn::ops::sigmoid(&lambda)?;
        let b2 = candle_nn::ops::sigmoid(&lambda.neg()?)?;
        let slope = (&self.lambda1 - &self.lambda0)?;
        let sigma2 = b2.broadcast_mul(&slope)?;
        Ok((a2.sqrt()?, b2.sqrt()?, sigma2))
    }

    /// The generative diffusion `σ²(t) = (λ₁ − λ₀) b_t²` (x-independent) at per-row times.
    pub fn diffusion(&self, t: &Tensor) -> Result<DiffusionAt> {
        let (_, _, sigma2) = self.coefficients(Time::PerSample(t))?;
        Ok(DiffusionAt {
            sigma2,
            dsigma2_dx: None,
        })
    }
}

impl VariationalProcess for VpSchedule {
    type Marginal = GaussianMarginal;

    fn marginal(&self, y: &Tensor, t: Time<'_>, derivatives: bool) -> Result<GaussianMarginal> {
        let batch = y.dim(0)?;
        let (a, b, sigma2) = self.coefficients(t)?;
        let alpha = y.broadcast_mul(&a)?;
        let beta = b.broadcast_as((batch, 1))?.contiguous()?;
        let (dalpha_dt, dbeta_dt) = if derivatives {
            // ȧ = a σ²/2, ḃ = −a² σ² / (2 b).
            let a_dot = (&a * &sigma2)?.affine(0.5, 0.0)?;
            let b_dot = ((a.sqr()? * &sigma2)? / &b)?.affine(-0.5, 0.0)?;
            (
                Some(y.broadcast_mul(&a_dot)?),
                Some(b_dot.broadcast_as((batch, 1))?.contiguous()?),
            )
        } else {
            (None, None)
        };
        Ok(GaussianMarginal {
            alpha,
            beta,
            dalpha_dt,
            dbeta_dt,
        })
    }
}

/// The VDM's generative SDE: drift `f(x, t) = f_q(x, ŷ(x, t), t)` of the schedule's variational
/// process with the signal prediction `ŷ = x + M(x, t)` (a skip connection around an MLP `M` on
/// `[x, t]`), diffusion `σ²(t) = (λ₁ − λ₀) b_t²`.
#[derive(Debug, Clone)]
pub struct VdmSde {
    schedule: VpSchedule,
    net: Mlp,
}

impl VdmSde {
    /// The SDE of `schedule` and the signal-prediction network `net` (input `[x, t]`, one
    /// output, identity).
    ///
    /// # Errors
    /// A network of another shape.
    pub fn new(schedule: VpSchedule, net: Mlp) -> Result<Self> {
        if net.in_dim() != 2 || net.out_dim() != 1 {
            return Err(Error::invalid(
                "net",
                format!("widths {:?}", net.config().widths),
                "must map [x, t] to one output",
            ));
        }
        Ok(Self { schedule, net })
    }

    /// The signal prediction `ŷ(x, t) = x + M(x, t)`.
    pub fn predict(&self, x: &Tensor, t: Time<'_>) -> Result<Tensor> {
        let (m, _) = value_and_tangents(&self.net, x, t, &[])?;
        Ok((x + m)?)
    }

    /// The schedule.
    pub fn schedule(&self) -> &VpSchedule {
        &self.schedule
    }

    /// The network `M`.
    pub fn net(&self) -> &Mlp {
        &self.net
    }

    /// A copy that builds no gradient graph.
    pub fn detached(&self) -> Result<Self> {
        Ok(Self {
            schedule: self.schedule.detached(),
            net: self.net.detached()?,
        })
    }
}

impl GenerativeSde for VdmSde {
    fn drift_and_diffusion(&self, x: &Tensor, t: &Tensor) -> Result<(Tensor, DiffusionAt)> {
        let y_hat = self.predict(x, Time::PerSample(t))?;
        let q = self.schedule.marginal(&y_hat, Time::PerSample(t), true)?;
        let d = self.schedule.diffusion(t)?;
        Ok((q.forward_drift(x, &d)?, d))
    }
}

/// The VDM drift-matching integrand in closed form, `½ SNR'(t) (y − ŷ(x_t, t))²` with
/// `x_t = a_t y + b_t ε` and `SNR' = (λ₁ − λ₀) a²/b²` — equal to what [`crate::sde_elbo`]
/// computes for [`VdmSde`] (tested), at a fraction of the cost.
pub fn drift_matching_closed_form(
    model: &VdmSde,
    y: &Tensor,
    t: &Tensor,
    eps: &Tensor,
) -> Result<Tensor> {
    let (a, b, _) = model.schedule.coefficients(Time::PerSample(t))?;
    let x = (y.broadcast_mul(&a)? + eps.broadcast_mul(&b)?)?;
    let y_hat = model.predict(&x, Time::PerSample(t))?;
    let (l0, l1) = model.schedule.endpoints();
    let snr_dot = ((a.sqr()? / b.sqr()?)?).broadcast_mul(&(l1 - l0)?)?;
    Ok((snr_dot * (y - y_hat)?.sqr()?)?.affine(0.5, 0.0)?)
}

fn core_err(e: Error) -> sde_core::Error {
    sde_core::Error::Field(Box::new(e))
}

impl VdmSde {
    fn t_column(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        Ok(Tensor::full(t, (x.dim(0)?, 1), x.device())?.to_dtype(x.dtype())?)
    }
}

/// One time per step, for the solvers (sampling by Euler–Maruyama): the same drift as the loss.
impl sde_core::Drift<Tensor> for VdmSde {
    fn drift(&self, x: &Tensor, t: f64) -> sde_core::Result<Tensor> {
        self.t_column(x, t)
            .and_then(|ts| self.drift_and_diffusion(x, &ts))
            .map(|(f, _)| f)
            .map_err(core_err)
    }
}

impl sde_core::Diffusion<Tensor> for VdmSde {
    /// `σ(t) = √((λ₁ − λ₀) b_t²)`, the same for every path.
    fn diffusion(&self, _x: &Tensor, t: f64) -> sde_core::Result<sde_core::Noise<Tensor>> {
        let run = || -> Result<f64> {
            let (_, _, sigma2) = self.schedule.coefficients(Time::Scalar(t))?;
            Ok(sigma2
                .to_dtype(DType::F64)?
                .flatten_all()?
                .to_vec1::<f64>()?
                .first()
                .copied()
                .unwrap_or(f64::NAN)
                .sqrt())
        };
        run().map(sde_core::Noise::Scalar).map_err(core_err)
    }

    fn diffusion_divergence(&self, _x: &Tensor, _t: f64) -> sde_core::Result<Option<Tensor>> {
        Ok(None)
    }
}
