//! The paper's flow-matching experiment (`docs/REFERENCE.md` §4, paper Figure 1 right): a velocity
//! network trained on the interpolant `x_t = t y + (1 − t) ε`, judged — beyond the paper — by
//! its exact log-likelihood through the probability-flow ODE.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::SeedableRng;
use sde_solvers::OdeMethod;
use sde_variational::flow_matching::{fm_elbo, fm_loss, FlowSde, FmWeighting, Interpolant};
use sde_variational::optim::{sorted_vars, AdamConfig};
use sde_variational::{Activation, Mlp, MlpConfig, NeuralOde};

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::evaluate::{ks_distance, last_to_host, mean_se, sample_sde, to_host};
use crate::ode::mean_log_likelihood;
use crate::sde::draw_t_eps;
use crate::train::{
    column, train, BatchLoss, Evaluation, Metric, Objective, TrainConfig, TrainHistory, TrainRng,
    Validation,
};

/// Settings of the flow-matching experiment. [`FmConfig::reference`] is `docs/REFERENCE.md` §4.
#[derive(Debug, Clone, PartialEq)]
pub struct FmConfig {
    /// Optimiser and schedule.
    pub train: TrainConfig,
    /// Widths of the velocity network (input `[x, t]`).
    pub widths: Vec<usize>,
    /// The interpolant's `β₀` (prior width) and `β₁` (width at the data); the starting values
    /// when they are learned.
    pub betas: (f64, f64),
    /// Learn `β₀, β₁` (`β = softplus(θ)`, needs `β₁ > 0`) by training on the negative FM ELBO
    /// instead of the plain flow-matching loss.
    pub learn_betas: bool,
    /// The weighting of the squared velocity error in the ELBO (and in the loss when it is
    /// not the reference's plain MSE); [`FmWeighting::YFree`] needs `β₁ > 0`.
    pub weighting: FmWeighting,
    /// The likelihood width `δ` of the monitored ELBO (`docs/REFERENCE.md` §4: 0.01).
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
    /// `docs/REFERENCE.md` §4: 2-64-64-1 velocity, `β₀ = 1`, `β₁ = 0`, plain MSE, Adam lr 1e-3,
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
            learn_betas: false,
            weighting: FmWeighting::Unit,
            delta: 0.01,
            val_draws: 4,
            n_steps: 99,
            n_samples: 8000,
            init_seed: 4,
            dtype: DType::F32,
        }
    }

    /// The variant beyond the paper: `β₀, β₁` learned from `(1, 0.1)` on the σ-weighted FM ELBO
    /// ([`FmWeighting::YFree`], a true bound); the rest as [`FmConfig::reference`].
    pub fn learned() -> Self {
        Self {
            betas: (1.0, 0.1),
            learn_betas: true,
            weighting: FmWeighting::YFree,
            ..Self::reference()
        }
    }

    /// Whether training uses the reference's plain MSE (fixed widths, unit weighting).
    fn plain_loss(&self) -> bool {
        !self.learn_betas && self.weighting == FmWeighting::Unit
    }

    fn check(&self) -> Result<()> {
        crate::error::check_counts(&[
            ("val_draws", self.val_draws),
            ("n_steps", self.n_steps),
            ("n_samples", self.n_samples),
        ])?;
        if !(self.delta.is_finite() && self.delta > 0.0) {
            return Err(Error::invalid(
                "delta",
                self.delta,
                "must be finite and positive",
            ));
        }
        if self.weighting == FmWeighting::YFree && self.betas.1 <= 0.0 {
            return Err(Error::invalid(
                "betas",
                format!("{:?}", self.betas),
                "the σ-weighted ELBO needs beta1 > 0 (its weight t/(2 β₀ β_t) is infinite at t = 1 otherwise)",
            ));
        }
        Interpolant::new(self.betas.0, self.betas.1)?;
        Ok(())
    }

    fn fingerprint(&self) -> impl serde::Serialize {
        (
            "fm",
            self.widths.clone(),
            (self.betas.0.to_bits(), self.betas.1.to_bits()),
            (self.learn_betas, format!("{:?}", self.weighting)),
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
    /// The model as a continuous normalizing flow (exact likelihood, sampling) from the prior
    /// `N(0, β₀²)` that its velocity transports.
    pub fn flow(&self) -> Result<NeuralOde> {
        Ok(NeuralOde::new(self.velocity.clone())?.with_prior_scale(self.interpolant.betas()?.0)?)
    }
}

/// Builds the velocity network for `config`.
pub fn build_model(config: &FmConfig, device: &Device) -> Result<FmModel> {
    config.check()?;
    let vars = VarMap::new();
    let (b0, b1) = config.betas;
    let interpolant = if config.learn_betas {
        let (interpolant, [raw0, raw1]) = Interpolant::learned(b0, b1, config.dtype, device)?;
        let mut data = vars.data().lock().unwrap_or_else(|e| e.into_inner());
        data.insert("fm.beta0_raw".into(), raw0);
        data.insert("fm.beta1_raw".into(), raw1);
        interpolant
    } else {
        Interpolant::new(b0, b1)?
    };
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

/// The flow-matching loss `L_FM` and the FM ELBO (`reconstruction − KL − diffusion`, with the
/// objective's weighting and likelihood width) on `data`, averaged per point over `draws`
/// stratified draws of `(t, ε)`, without a gradient graph: means over points and their standard
/// errors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FmEvaluation {
    /// `L_FM` (plain MSE) and its standard error.
    pub loss: (f64, f64),
    /// The ELBO and its standard error.
    pub elbo: (f64, f64),
}

/// Evaluates [`FmEvaluation`] for `model` on `data` `(n, 1)`.
pub fn evaluate(
    model: &FmModel,
    data: &Tensor,
    draws: usize,
    delta: f64,
    weighting: FmWeighting,
    rng: &mut TrainRng,
) -> Result<FmEvaluation> {
    let v = model.velocity.detached()?;
    let interpolant = model.interpolant.detached()?;
    let delta = Tensor::full(delta, (1, 1), data.device())?.to_dtype(data.dtype())?;
    let n = data.dim(0)?;
    let (mut loss, mut elbo) = (vec![0.0; n], vec![0.0; n]);
    for k in 0..draws {
        let (t, eps) = draw_t_eps(rng, n, Some((k, draws)), data.dtype(), data.device())?;
        let l = to_host(&fm_loss(&v, &interpolant, data, &t, &eps)?)?;
        let e = to_host(&fm_elbo(&v, &interpolant, data, &t, &eps, &delta, weighting)?.elbo()?)?;
        for i in 0..n {
            loss[i] += l[i] / draws as f64;
            elbo[i] += e[i] / draws as f64;
        }
    }
    Ok(FmEvaluation {
        loss: mean_se(&loss),
        elbo: mean_se(&elbo),
    })
}

/// The reference's plain MSE at one `(t, ε)` per point (or, with learned widths or the σ
/// weighting, the negative FM ELBO), and the validation loss and ELBO (`docs/MATH.md` §8).
pub struct FmObjective {
    /// The model.
    pub model: FmModel,
    /// Draws per validation point.
    pub val_draws: usize,
    /// The likelihood width of the ELBO.
    pub delta: f64,
    /// The ELBO's weighting.
    pub weighting: FmWeighting,
    /// Train on the plain MSE (the reference) rather than the negative ELBO.
    pub plain_loss: bool,
}

impl Objective for FmObjective {
    fn parameters(&self) -> Vec<(String, Var)> {
        sorted_vars(&self.model.vars)
    }

    fn loss(&mut self, batch: &Tensor, rng: &mut TrainRng) -> Result<BatchLoss> {
        let (t, eps) = draw_t_eps(rng, batch.dim(0)?, None, batch.dtype(), batch.device())?;
        let (v, it) = (&self.model.velocity, &self.model.interpolant);
        if self.plain_loss {
            let l = fm_loss(v, it, batch, &t, &eps)?;
            return Ok(BatchLoss::new(l.mean_all()?));
        }
        let delta = Tensor::full(self.delta, (1, 1), batch.device())?.to_dtype(batch.dtype())?;
        let terms = fm_elbo(v, it, batch, &t, &eps, &delta, self.weighting)?;
        Ok(BatchLoss::new(terms.elbo()?.mean_all()?.neg()?))
    }

    fn validate(&mut self, data: &Tensor, rng: &mut TrainRng) -> Result<Validation> {
        let e = evaluate(
            &self.model,
            data,
            self.val_draws,
            self.delta,
            self.weighting,
            rng,
        )?;
        let mut metrics = vec![
            Metric::lower("fm_loss", e.loss.0, Some(e.loss.1)),
            Metric::higher("elbo", e.elbo.0, Some(e.elbo.1)),
        ];
        if self.model.interpolant.is_learned() {
            let (b0, b1) = self.model.interpolant.betas()?;
            metrics.push(Metric::lower("beta0", b0, None));
            metrics.push(Metric::lower("beta1", b1, None));
        }
        Ok(Validation { metrics })
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
    /// The final validation flow-matching loss and ELBO, with standard errors (20 draws per
    /// point).
    pub val: FmEvaluation,
    /// The interpolant's final `(β₀, β₁)` (the fixed ones unless learned).
    pub betas: (f64, f64),
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
/// Bad settings.
pub fn run(
    config: &FmConfig,
    data: &Dataset,
    device: &Device,
    on_epoch: impl FnMut(&Evaluation),
) -> Result<FmOutcome> {
    let model = build_model(config, device)?;
    let mut objective = FmObjective {
        model: model.clone(),
        val_draws: config.val_draws,
        delta: config.delta,
        weighting: config.weighting,
        plain_loss: config.plain_loss(),
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
    let val_eval = evaluate(&model, &val, 20, config.delta, config.weighting, &mut rng)?;
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
    let flow_sde = FlowSde::new(&velocity, model.interpolant.detached()?, 1.0)?;
    let sde_samples = last_to_host(&sample_sde(
        &flow_sde,
        config.n_samples,
        config.n_steps,
        (config.dtype, device),
        &mut rng,
        false,
    )?)?;
    let sde_ks = ks_distance(&sde_samples, &data.validation);
    let betas = model.interpolant.betas()?;
    Ok(FmOutcome {
        model,
        history,
        val_log_likelihood,
        val: val_eval,
        betas,
        samples,
        ks,
        sde_samples,
        sde_ks,
        eval_seconds: t0.elapsed().as_secs_f64(),
    })
}
