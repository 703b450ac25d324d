//! A neural generative SDE `dx = f(x, t) dt + σ(x, t) dW` (`docs/REFERENCE.md` §2): a drift
//! network and a softplus diffusion network on `[x, t]`, one formula for every use — the
//! losses (one time per row, [`GenerativeSde`]), the solvers (one time per step, the
//! `sde_core` [`Drift`] and [`Diffusion`] traits on tensors) and the 1-D Fokker–Planck solver
//! (the same traits on `Vec<f64>`).

use candle_core::{DType, Device, Tensor};
use sde_core::{Diffusion, Drift, Noise};

use crate::elbo::GenerativeSde;
use crate::engine::{value_and_tangents, values_and_tangents};
use crate::error::{Error, Result};
use crate::mlp::{Activation, Mlp, Time};
use crate::process::{two, DiffusionAt};

/// A generative SDE with drift `f = drift(x, t)` and diffusion `σ = sigma(x, t)` (softplus
/// output, so `σ > 0`), both tanh MLPs with input `[x, t]` and one output.
#[derive(Debug, Clone)]
pub struct NeuralSde {
    drift: Mlp,
    sigma: Mlp,
}

impl NeuralSde {
    /// The SDE of `drift` (identity output) and `sigma` (softplus output), 1-D.
    ///
    /// # Errors
    /// Networks not mapping `[x, t]` to one output, a `sigma` without softplus output, or
    /// different dtypes.
    pub fn new(drift: Mlp, sigma: Mlp) -> Result<Self> {
        for (name, net) in [("drift", &drift), ("sigma", &sigma)] {
            if net.in_dim() != 2 || net.out_dim() != 1 {
                return Err(Error::invalid(
                    name,
                    format!("widths {:?}", net.config().widths),
                    "must map [x, t] to one output",
                ));
            }
        }
        if sigma.config().output != Activation::Softplus {
            return Err(Error::invalid(
                "sigma",
                format!("{:?} output", sigma.config().output),
                "must have a softplus output (σ > 0)",
            ));
        }
        if sigma.dtype() != drift.dtype() {
            return Err(Error::invalid(
                "sigma",
                format!("{:?} for a {:?} drift", sigma.dtype(), drift.dtype()),
                "both networks must have one dtype",
            ));
        }
        Ok(Self { drift, sigma })
    }

    /// The drift network.
    pub fn drift_net(&self) -> &Mlp {
        &self.drift
    }

    /// The diffusion network.
    pub fn sigma_net(&self) -> &Mlp {
        &self.sigma
    }

    /// A copy that builds no gradient graph, for sampling and evaluation.
    pub fn detached(&self) -> Result<Self> {
        Ok(Self {
            drift: self.drift.detached()?,
            sigma: self.sigma.detached()?,
        })
    }

    /// `(f, σ, ∂σ/∂x)` at rows `x` `(B, 1)` and times `t`: the one place the networks are
    /// evaluated.
    pub fn fields(&self, x: &Tensor, t: Time<'_>) -> Result<(Tensor, Tensor, Tensor)> {
        // Both networks at the same rows: one op, shared between the threads by cost.
        let [(f, _), (s, ds)] = two(values_and_tangents(
            &[(&self.drift, &[]), (&self.sigma, &[0])],
            x,
            t,
        )?)?;
        let ds = ds
            .into_iter()
            .next()
            .ok_or_else(|| Error::invalid("sigma", "no tangent", "the engine returned no ∂σ/∂x"))?;
        Ok((f, s, ds))
    }

    fn dtype(&self) -> DType {
        self.drift.dtype()
    }

    fn device(&self) -> &Device {
        self.drift.device()
    }
}

impl GenerativeSde for NeuralSde {
    fn drift_and_diffusion(&self, x: &Tensor, t: &Tensor) -> Result<(Tensor, DiffusionAt)> {
        let (f, s, ds) = self.fields(x, Time::PerSample(t))?;
        // ∂σ²/∂x = 2 σ ∂σ/∂x.
        let dsigma2_dx = Some(((&s * &ds)? * 2.0)?);
        Ok((
            f,
            DiffusionAt {
                sigma2: s.sqr()?,
                dsigma2_dx,
            },
        ))
    }
}

fn core_err(e: Error) -> sde_core::Error {
    sde_core::Error::Field(Box::new(e))
}

impl Drift<Tensor> for NeuralSde {
    fn drift(&self, x: &Tensor, t: f64) -> sde_core::Result<Tensor> {
        value_and_tangents(&self.drift, x, Time::Scalar(t), &[])
            .map(|(f, _)| f)
            .map_err(core_err)
    }
}

impl Diffusion<Tensor> for NeuralSde {
    fn diffusion(&self, x: &Tensor, t: f64) -> sde_core::Result<Noise<Tensor>> {
        value_and_tangents(&self.sigma, x, Time::Scalar(t), &[])
            .map(|(s, _)| Noise::Diagonal(s))
            .map_err(core_err)
    }

    fn diffusion_divergence(&self, x: &Tensor, t: f64) -> sde_core::Result<Option<Tensor>> {
        // ∂σ²/∂x = 2 σ ∂σ/∂x, from the diffusion network alone.
        let (s, ds) =
            value_and_tangents(&self.sigma, x, Time::Scalar(t), &[0]).map_err(core_err)?;
        let d = ds
            .first()
            .ok_or_else(|| Error::invalid("sigma", "no tangent", "the engine returned no ∂σ/∂x"))
            .and_then(|ds| Ok((&s * ds)?.affine(2.0, 0.0)?))
            .map_err(core_err)?;
        Ok(Some(d))
    }
}

impl NeuralSde {
    /// A `(n, 1)` tensor of `xs` in the model's dtype and device.
    fn column(&self, xs: &[f64]) -> Result<Tensor> {
        Ok(Tensor::from_slice(xs, (xs.len(), 1), self.device())?.to_dtype(self.dtype())?)
    }
}

fn host(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?)
}

/// On `Vec<f64>` (the Fokker–Planck solver's grid), through the same tensor evaluation.
impl Drift<Vec<f64>> for NeuralSde {
    fn drift(&self, x: &Vec<f64>, t: f64) -> sde_core::Result<Vec<f64>> {
        let f = self
            .column(x)
            .and_then(|xs| Drift::<Tensor>::drift(self, &xs, t).map_err(Error::from))
            .map_err(core_err)?;
        host(&f).map_err(core_err)
    }
}

impl Diffusion<Vec<f64>> for NeuralSde {
    fn diffusion(&self, x: &Vec<f64>, t: f64) -> sde_core::Result<Noise<Vec<f64>>> {
        let xs = self.column(x).map_err(core_err)?;
        match Diffusion::<Tensor>::diffusion(self, &xs, t)? {
            Noise::Diagonal(s) => Ok(Noise::Diagonal(host(&s).map_err(core_err)?)),
            Noise::Scalar(g) => Ok(Noise::Scalar(g)),
        }
    }

    fn diffusion_divergence(&self, x: &Vec<f64>, t: f64) -> sde_core::Result<Option<Vec<f64>>> {
        let xs = self.column(x).map_err(core_err)?;
        match Diffusion::<Tensor>::diffusion_divergence(self, &xs, t)? {
            Some(d) => Ok(Some(host(&d).map_err(core_err)?)),
            None => Ok(None),
        }
    }
}
