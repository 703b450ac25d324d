//! The exact likelihood of an ODE model: a continuous normalizing flow (`docs/MATH.md` §3, paper
//! §5.1, eq. 23–25).
//!
//! A neural field `v(x, t)` (an [`Mlp`] with input `[x, t]`, output `d`) pushes the prior
//! `p_0 = N(0, I)` at t = 0 to the model density `p_1` at t = 1. Integrating the data point
//! `y` and its divergence integral from t = 1 down to t = 0 gives
//! `log p_1(y) = log p_0(x_0) + ∫_1^0 ∇·v dt` — exact up to the ODE solver's error, and
//! differentiable in the network's weights by back-propagating through the solver's steps
//! (the divergence is a forward-mode tangent, an ordinary tensor).

use candle_core::Tensor;
use rand::Rng;
use sde_core::{DivergenceField, VectorField};
use sde_solvers::{cnf, OdeMethod, TimeGrid};

use crate::engine;
use crate::error::{Error, Result};
use crate::mlp::{divergence_exact, with_time, Mlp, Time};

const LN_2PI: f64 = 1.837_877_066_409_345_3;

/// A neural ODE `dx/dt = v(x, t)` with `v` an MLP of input width `d + 1` (`[x, t]`) and
/// output width `d`.
#[derive(Debug, Clone)]
pub struct NeuralOde {
    mlp: Mlp,
    probe: Option<Tensor>,
    prior_scale: f64,
}

impl NeuralOde {
    /// The ODE of `mlp`; errors unless its output width `d` equals input width − 1.
    pub fn new(mlp: Mlp) -> Result<Self> {
        if mlp.out_dim() + 1 != mlp.in_dim() {
            return Err(Error::invalid(
                "mlp widths",
                format!("in {} out {}", mlp.in_dim(), mlp.out_dim()),
                "a field on R^d needs input d + 1 ([x, t]) and output d",
            ));
        }
        Ok(Self {
            mlp,
            probe: None,
            prior_scale: 1.0,
        })
    }

    /// The same ODE from the prior `N(0, s² I)` instead of `N(0, I)` (e.g. flow matching with
    /// `β₀ ≠ 1`, whose velocity transports `N(0, β₀²)`).
    ///
    /// # Errors
    /// `s` not finite and positive.
    pub fn with_prior_scale(mut self, s: f64) -> Result<Self> {
        if !(s.is_finite() && s > 0.0) {
            return Err(Error::invalid(
                "prior_scale",
                s,
                "must be finite and positive",
            ));
        }
        self.prior_scale = s;
        Ok(self)
    }

    /// The prior's scale `s` (`p_0 = N(0, s² I)`).
    pub fn prior_scale(&self) -> f64 {
        self.prior_scale
    }

    /// `log N(x₀; 0, s² I)` per row of `x0` `(batch, d)`.
    fn log_prior(&self, x0: &Tensor) -> Result<Tensor> {
        let (s, d) = (self.prior_scale, x0.dim(1)? as f64);
        Ok(x0
            .sqr()?
            .sum_keepdim(1)?
            .affine(-0.5 / (s * s), -0.5 * d * LN_2PI - d * s.ln())?)
    }

    /// A copy that builds no gradient graph (see [`Mlp::detached`]): for evaluation.
    pub fn detached(&self) -> Result<Self> {
        Ok(Self {
            mlp: self.mlp.detached()?,
            probe: self.probe.clone(),
            prior_scale: self.prior_scale,
        })
    }

    /// The network.
    pub fn mlp(&self) -> &Mlp {
        &self.mlp
    }

    /// The state dimension `d`.
    pub fn dim(&self) -> usize {
        self.mlp.out_dim()
    }

    /// A copy that estimates the divergence with Hutchinson's estimator `εᵀ (∂v/∂x) ε`, with
    /// one Rademacher probe `ε` per sample drawn from `rng` and held fixed along the
    /// integration (FFJORD). Unbiased; one tangent instead of `d`. `batch` is the number of
    /// samples the copy will integrate.
    pub fn with_hutchinson_probe<R: Rng + ?Sized>(
        &self,
        batch: usize,
        rng: &mut R,
    ) -> Result<Self> {
        let d = self.dim();
        let mut v: Vec<f64> = (0..batch * d)
            .map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 })
            .collect();
        // The tangent of the time input is zero.
        let mut full = Vec::with_capacity(batch * (d + 1));
        for row in v.chunks_mut(d) {
            full.extend_from_slice(row);
            full.push(0.0);
        }
        let probe = Tensor::from_vec(full, (batch, d + 1), self.mlp.device())?
            .to_dtype(self.mlp.dtype())?;
        Ok(Self {
            mlp: self.mlp.clone(),
            probe: Some(probe),
            prior_scale: self.prior_scale,
        })
    }

    fn eval(&self, x: &Tensor, t: f64) -> Result<(Tensor, Tensor)> {
        match &self.probe {
            None => divergence_exact(&self.mlp, x, t),
            Some(probe) => {
                let xt = with_time(x, Time::Scalar(t))?;
                let (v, jvps) = self.mlp.forward_jvp(&xt, std::slice::from_ref(probe))?;
                let eps = probe.narrow(1, 0, self.dim())?;
                let div = jvps[0].mul(&eps)?.sum_keepdim(1)?;
                Ok((v, div))
            }
        }
    }

    /// `log p_1(y)` per sample, `(batch, 1)`, for data `ys` of shape `(batch, d)`:
    /// integrate from t = 1 to t = 0 on `n_steps` uniform steps of `method`, then add the
    /// prior's log-density of the end point.
    pub fn log_likelihood(&self, ys: &Tensor, method: OdeMethod, n_steps: usize) -> Result<Tensor> {
        let (batch, d) = ys.dims2()?;
        if d != self.dim() {
            return Err(Error::invalid(
                "ys",
                format!("shape {:?}", ys.dims()),
                "width must equal the model's dimension",
            ));
        }
        if let Some(i) = sde_core::Vector::first_non_finite(ys)? {
            return Err(Error::invalid(
                "ys",
                format!("non-finite value at row {} (entry {i})", i / d.max(1)),
                "data must be finite",
            ));
        }
        if let Some(p) = &self.probe {
            if p.dim(0)? != batch {
                return Err(Error::invalid(
                    "ys",
                    format!("batch {batch}"),
                    "must equal the Hutchinson probe's batch",
                ));
            }
        }
        let grid = TimeGrid::uniform(1.0, 0.0, n_steps)?;
        let zero = Tensor::zeros((batch, 1), ys.dtype(), ys.device())?;
        if self.probe.is_none() && d == 1 && engine::supports(&self.mlp) {
            // The whole solve of the packed state [x, a] as one fused op (see
            // [`engine::solve`]): the engine's output row [v, ∂v/∂x] for the tangent in x is
            // exactly d[x, a]/dt, and the network reads x from column 0, ignoring a.
            let start = Tensor::cat(&[ys, &zero], 1)?;
            let end = engine::solve(&self.mlp, &start, &[0], method, &grid)?;
            let log_p0 = self.log_prior(&end.narrow(1, 0, 1)?)?;
            return Ok(log_p0.add(&end.narrow(1, 1, 1)?)?);
        }
        let sol = cnf::integrate(method, self, ys.clone(), zero, &grid)?;
        Ok(self.log_prior(&sol.x_end)?.add(&sol.divergence_integral)?)
    }

    /// Samples of the model: `x_0 ~ N(0, s² I)` drawn from `rng`, integrated from t = 0 to t = 1.
    /// With `record`, every grid state is returned (paths for figures); else only the last.
    pub fn sample<R: Rng + ?Sized>(
        &self,
        n: usize,
        method: OdeMethod,
        n_steps: usize,
        rng: &mut R,
        record: bool,
    ) -> Result<Vec<Tensor>> {
        let x0 = sde_core::tensor_standard_normal(
            rng,
            &[n, self.dim()],
            self.mlp.dtype(),
            self.mlp.device(),
        )?
        .affine(self.prior_scale, 0.0)?;
        let grid = TimeGrid::uniform(0.0, 1.0, n_steps)?;
        if !record && engine::supports(&self.mlp) {
            return Ok(vec![engine::solve(&self.mlp, &x0, &[], method, &grid)?]);
        }
        let sol = method.solve(self, x0, &grid, record)?;
        Ok(sol.states().to_vec())
    }
}

fn field_err(e: Error) -> sde_core::Error {
    sde_core::Error::Field(Box::new(e))
}

impl DivergenceField<Tensor, Tensor> for NeuralOde {
    fn velocity_divergence(&self, x: &Tensor, t: f64) -> sde_core::Result<(Tensor, Tensor)> {
        self.eval(x, t).map_err(field_err)
    }
}

impl VectorField<Tensor> for NeuralOde {
    fn velocity(&self, x: &Tensor, t: f64) -> sde_core::Result<Tensor> {
        // The engine's fused op on the CPU (sampling 8,000 points with RK4 was 4× slower
        // through the generic path), the generic candle path elsewhere.
        engine::value_and_tangents(&self.mlp, x, Time::Scalar(t), &[])
            .map(|(v, _)| v)
            .map_err(field_err)
    }
}
