//! The paper's flow-matching experiment (`REFERENCE.md` §4, paper Figure 1 right): a velocity
//! network trained on the interpolant `x_t = t y + (1 − t) ε`, judged — beyond the paper — by
//! its exact log-likelihood through the probability-flow ODE.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::SeedableRng;
use sde_solvers::OdeMethod;
use sde_variational::flow_matching::{fm_loss, FlowSde, Interpolant};
use sde_variational::optim::{sorted_vars, AdamConfig};
use sde_variational::{Activation, Mlp, MlpConfig, NeuralOde};

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::evaluate::{ks_distance, last_to_host, sample_sde, to_host};
use crate::ode::mean_log_likelihood;
use crate::sde::draw_t_eps;
use crate::train::{
    column, train, BatchLoss, Evaluation, Metric, Objective, TrainConfig, TrainHistory, TrainRng,
    Validation,
};

/// Settings of the flow-matching experiment. [`FmConfig::reference`] is `REFERENCE.md` §4.
#[derive(Debug, Clone, PartialEq)]
pub struct FmConfig {
    /// Optimiser and schedule.
    pub train: TrainConfig,
    /// Widths of the velocity network (input `[x, t]`).
    pub widths: Vec<usize>,
    /// The interpolant's `β₀` (prior width) and `β₁` (width at the data).
    pub betas: (f64, f64),
    /// The likelihood width `δ` of the monitored ELBO (`REFERENCE.md` §4: 0.01).
    pub delta: f64,
    /// Draws of `(t, ε)` per validation point for the validation loss.
    pub val_draws: usize,
    /// Steps of the RK4 evaluation (exact likelihood) and of sampling.
    pub n_steps: usize,
    /// Number of generated samples.
    pub n_samples: usize,
    /// Seed of the network's initialisation.
    pub init_seed: u64,
    /// Floating-point type.
    pub dtype: DType,
}

impl FmConfig {
    /// `REFERENCE.md` §4: 2-64-64-1 velocity, `β₀ = 1`, `β₁ = 0`, plain MSE, Adam lr 1e-3,
    /// 10,000 epochs of batch 125; exact likelihood with 99 RK4 steps.
    pub fn reference() -> Self {
        Self {
            train: TrainConfig {
                epochs: 10_000,
                adam: AdamConfig {
                    lr: 1e-3,
                    ..AdamConfig::default()
                },
                validate_every: 1000,
                ..TrainConfig::default()
            },
            widths: vec![2, 64, 64, 1],
            betas: (1.0, 0.0),
            delta: 0.01,
            val_draws: 4,
            n_steps: 99,
            n_samples: 8000,
            init_seed: 4,
            dtype: DType::F32,
        }
    }

    fn check(&self) -> Result<Interpolant> {
        if self.val_draws == 0 {
            return Err(Error::invalid("val_draws", 0, "must be at least 1"));
        }
        if self.n_steps == 0 {
            return Err(Error::invalid("n_steps", 0, "must be at least 1"));
        }
        if !(self.delta.is_finite() && self.delta > 0.0) {
            return Err(Error::invalid(
                "delta",
                self.delta,
                "must be finite and positive",
            ));
        }
        Ok(Interpolant::new(self.betas.0, self.betas.1)?)
    }

    fn fingerprint(&self) -> impl serde::Serialize {
        (
            "fm",
            self.widths.clone(),
            (self.betas.0.to_bits(), self.betas.1.to_bits()),
            self.init_seed,
            format!("{:?}", self.dtype),
        )
    }
}

/// The flow-matching model: the velocity network and its variables.
#[derive(Clone)]
pub struct FmModel {
    /// The velocity `v(x, t)`.
    pub velocity: Mlp,
    /// Its variables.
    pub vars: VarMap,
    /// The interpolant it is trained on.
    pub interpolant: Interpolant,
}

impl std::fmt::Debug for FmModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FmModel")
            .field("velocity", &self.velocity)
            .field("interpolant", &self.interpolant)
            .finish_non_exhaustive()
    }
}

impl FmModel {
    /// The model as a continuous normalizing flow (exact likelihood, sampling).
    pub fn flow(&self) -> Result<NeuralOde> {
        Ok(NeuralOde::new(self.velocity.clone())?)
    }
}

/// Builds the velocity network for `config`.
pub fn build_model(config: &FmConfig, device: &Device) -> Result<FmModel> {
    let interpolant = config.check()?;
    let vars = VarMap::new();
    let mut rng = TrainRng::seed_from_u64(config.init_seed);
    let velocity = Mlp::new(
        &MlpConfig::new(config.widths.clone(), Activation::Identity),
        &vars,
        "fm.v",
        config.dtype,
        device,
        &mut rng,
    )?;
    Ok(FmModel {
        velocity,
        vars,
        interpolant,
    })
}

/// The flow-matching loss `L_FM` on `data` with `draws` stratified draws per point, without a
/// gradient graph: its mean and Monte-Carlo standard error.
pub fn evaluate_loss(
    model: &FmModel,
    data: &Tensor,
    draws: usize,
    rng: &mut TrainRng,
) -> Result<(f64, f64)> {
    let v = model.velocity.detached()?;
    let n = data.dim(0)?;
    let (mut sum, mut sq, mut count) = (0.0, 0.0, 0.0);
    for k in 0..draws {
        let (t, eps) = draw_t_eps(rng, n, Some((k, draws)), data.dtype(), data.device())?;
        let l = to_host(&fm_loss(&v, &model.interpolant, data, &t, &eps)?)?;
        for x in l {
            sum += x;
            sq += x * x;
            count += 1.0;
        }
    }
    let mean = sum / count;
    let var = (sq / count - mean * mean).max(0.0);
    Ok((mean, (var / count).sqrt()))
}

/// The plain MSE loss at one `(t, ε)` per point, and the validation loss with the monitored
/// ELBO `reconstruction − KL − 2 L_FM` (`MATH.md` §8).
pub struct FmObjective {
    /// The model.
    pub model: FmModel,
    /// Draws per validation point.
    pub val_draws: usize,
    /// The likelihood width of the monitored ELBO.
    pub delta: f64,
}

impl Objective for FmObjective {
    fn parameters(&self) -> Vec<(String, Var)> {
        sorted_vars(&self.model.vars)
    }

    fn loss(&mut self, batch: &Tensor, rng: &mut TrainRng) -> Result<BatchLoss> {
        let (t, eps) = draw_t_eps(rng, batch.dim(0)?, None, batch.dtype(), batch.device())?;
        let l = fm_loss(
            &self.model.velocity,
            &self.model.interpolant,
            batch,
            &t,
            &eps,
        )?;
        Ok(BatchLoss::new(l.mean_all()?))
    }

    fn validate(&mut self, data: &Tensor, rng: &mut TrainRng) -> Result<Validation> {
        let (l, se) = evaluate_loss(&self.model, data, self.val_draws, rng)?;
        let it = &self.model.interpolant;
        let elbo = it.reconstruction(self.delta) + it.neg_prior_kl() - 2.0 * l;
        Ok(Validation {
            metrics: vec![
                Metric::lower("fm_loss", l, Some(se)),
                Metric::higher("elbo", elbo, Some(2.0 * se)),
            ],
        })
    }
}

/// What the flow-matching experiment produced.
#[derive(Debug)]
pub struct FmOutcome {
    /// The trained model.
    pub model: FmModel,
    /// The training curve and timings.
    pub history: TrainHistory,
    /// Exact validation log-likelihood through the probability-flow ODE (RK4), and its
    /// standard error over points.
    pub val_log_likelihood: (f64, f64),
    /// The final validation flow-matching loss and its standard error.
    pub val_loss: (f64, f64),
    /// The monitored ELBO `reconstruction − KL − 2 L_FM` with likelihood width `δ`.
    pub val_elbo: f64,
    /// Generated samples: the probability-flow ODE (RK4) from `N(0, 1)`.
    pub samples: Vec<f64>,
    /// Kolmogorov–Smirnov distance between the samples and the validation set.
    pub ks: f64,
    /// Samples of the same model drawn by the SDE `v + ½ σ² ∇log q_t` (score from the
    /// velocity, `σ = β_t`), Euler–Maruyama with `n_steps` steps.
    pub sde_samples: Vec<f64>,
    /// Their Kolmogorov–Smirnov distance to the validation set.
    pub sde_ks: f64,
    /// Seconds of the final evaluation and sampling.
    pub eval_seconds: f64,
}

/// Runs the flow-matching experiment: trains, evaluates the exact likelihood, samples.
///
/// # Errors
/// Bad settings; `β₀ ≠ 1` (the CNF's prior is `N(0, 1)`) for the likelihood.
pub fn run(
    config: &FmConfig,
    data: &Dataset,
    device: &Device,
    on_epoch: impl FnMut(&Evaluation),
) -> Result<FmOutcome> {
    let model = build_model(config, device)?;
    if config.betas.0 != 1.0 {
        return Err(Error::invalid(
            "betas",
            format!("{:?}", config.betas),
            "the exact likelihood needs the standard prior, beta0 = 1",
        ));
    }
    let mut objective = FmObjective {
        model: model.clone(),
        val_draws: config.val_draws,
        delta: config.delta,
    };
    let history = train(
        &mut objective,
        data,
        &config.train,
        &config.fingerprint(),
        config.dtype,
        device,
        on_epoch,
    )?;
    let t0 = std::time::Instant::now();
    let val = column(&data.validation, config.dtype, device)?;
    let flow = model.flow()?;
    let val_log_likelihood = mean_log_likelihood(&flow, &val, OdeMethod::Rk4, config.n_steps)?;
    let mut rng = TrainRng::seed_from_u64(config.train.seed ^ 0xf10_e7a1);
    let val_loss = evaluate_loss(&model, &val, 20, &mut rng)?;
    let it = &model.interpolant;
    let val_elbo = it.reconstruction(config.delta) + it.neg_prior_kl() - 2.0 * val_loss.0;
    let last = flow.detached()?.sample(
        config.n_samples,
        OdeMethod::Rk4,
        config.n_steps,
        &mut rng,
        false,
    )?;
    let samples = last_to_host(&last)?;
    let ks = ks_distance(&samples, &data.validation);
    let velocity = model.velocity.detached()?;
    let flow_sde = FlowSde::new(&velocity, model.interpolant, 1.0)?;
    let sde_samples = last_to_host(&sample_sde(
        &flow_sde,
        config.n_samples,
        config.n_steps,
        (config.dtype, device),
        &mut rng,
        false,
    )?)?;
    let sde_ks = ks_distance(&sde_samples, &data.validation);
    Ok(FmOutcome {
        model,
        history,
        val_log_likelihood,
        val_loss,
        val_elbo,
        samples,
        ks,
        sde_samples,
        sde_ks,
        eval_seconds: t0.elapsed().as_secs_f64(),
    })
}
