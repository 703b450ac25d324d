//! A score-matching run on the paper's data (not in the paper; `docs/REFERENCE.md` §3's network and
//! budget): denoising score matching on the fixed VP schedule with log-SNR from −5 to 5, reported
//! by its SDE ELBO and by its exact likelihood through the probability-flow ODE.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::SeedableRng;
use sde_solvers::OdeMethod;
use sde_variational::optim::{sorted_vars, AdamConfig};
use sde_variational::score_matching::{dsm_loss, ScoreFlow, ScoreSde};
use sde_variational::vdm::VpSchedule;
use sde_variational::{Activation, Mlp, MlpConfig, Time, VariationalProcess};

use crate::data::Dataset;
use crate::error::Result;
use crate::evaluate::{ks_distance, last_to_host, mean_se_over_points, sample_sde};
use crate::sde::{draw_t_eps, evaluate_process_elbo, ElboEstimate};
use crate::train::{
    column, train, BatchLoss, Evaluation, Objective, TrainConfig, TrainHistory, TrainRng,
    Validation,
};

/// Settings of the score-matching run. [`SmConfig::reference`] takes VDM's network and budget.
#[derive(Debug, Clone, PartialEq)]
pub struct SmConfig {
    /// Optimiser and schedule.
    pub train: TrainConfig,
    /// Widths of the noise-prediction network `M` (input `[x, t]`).
    pub widths: Vec<usize>,
    /// The fixed log-SNR endpoints `(λ₀, λ₁)`.
    pub lambda: (f64, f64),
    /// Draws per validation point in the periodic validations.
    pub train_val_draws: usize,
    /// Draws per point in the final ELBO.
    pub eval_draws: usize,
    /// Steps of sampling (Euler–Maruyama) and of the exact likelihood (RK4).
    pub n_steps: usize,
    /// Number of generated samples.
    pub n_samples: usize,
    /// Seed of the network's initialisation.
    pub init_seed: u64,
    /// Floating-point type.
    pub dtype: DType,
}

impl SmConfig {
    /// VDM's budget (`docs/REFERENCE.md` §3): 2-64-64-1, Adam lr 1e-3, clipping 1.0, 2,000 epochs;
    /// the schedule fixed at log-SNR −5 → 5.
    pub fn reference() -> Self {
        Self {
            train: TrainConfig {
                epochs: 2000,
                adam: AdamConfig {
                    lr: 1e-3,
                    max_grad_norm: Some(1.0),
                    ..AdamConfig::default()
                },
                validate_every: 100,
                ..TrainConfig::default()
            },
            widths: vec![2, 64, 64, 1],
            lambda: (-5.0, 5.0),
            train_val_draws: 4,
            eval_draws: 20,
            n_steps: 99,
            n_samples: 8000,
            init_seed: 5,
            dtype: DType::F32,
        }
    }

    fn fingerprint(&self) -> impl serde::Serialize {
        (
            "sm",
            self.widths.clone(),
            (self.lambda.0.to_bits(), self.lambda.1.to_bits()),
            self.init_seed,
            self.train_val_draws,
            format!("{:?}", self.dtype),
        )
    }
}

/// The score model and its variables.
#[derive(Clone)]
pub struct SmModel {
    /// The generative SDE (fixed schedule, learned score).
    pub sde: ScoreSde,
    /// Its variables (`sm.m.params`).
    pub vars: VarMap,
}

impl std::fmt::Debug for SmModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmModel")
            .field("sde", &self.sde)
            .finish_non_exhaustive()
    }
}

/// Builds the network and the fixed schedule.
pub fn build_model(config: &SmConfig, device: &Device) -> Result<SmModel> {
    crate::error::check_counts(&[
        ("eval_draws", config.eval_draws),
        ("train_val_draws", config.train_val_draws),
        ("n_steps", config.n_steps),
        ("n_samples", config.n_samples),
    ])?;
    let vars = VarMap::new();
    let mut rng = TrainRng::seed_from_u64(config.init_seed);
    let net = Mlp::new(
        &MlpConfig::new(config.widths.clone(), Activation::Identity),
        &vars,
        "sm.m",
        config.dtype,
        device,
        &mut rng,
    )?;
    // Plain tensors, not variables: the schedule is fixed.
    let (l0, l1) = VpSchedule::vars(config.lambda.0, config.lambda.1, config.dtype, device)?;
    let schedule = VpSchedule::new(l0.as_tensor().detach(), l1.as_tensor().detach())?;
    Ok(SmModel {
        sde: ScoreSde::new(schedule, net)?,
        vars,
    })
}

/// The likelihood width `b_1` of the schedule at t = 1, `(1, 1)`.
pub fn delta(sde: &ScoreSde) -> Result<Tensor> {
    let (_, b, _) = sde.schedule().coefficients(Time::Scalar(1.0))?;
    Ok(b)
}

/// The score model's SDE ELBO with `draws` stratified draws per point.
pub fn evaluate_elbo(
    model: &SmModel,
    data: &Tensor,
    draws: usize,
    rng: &mut TrainRng,
) -> Result<ElboEstimate> {
    let sde = model.sde.detached()?;
    evaluate_process_elbo(sde.schedule(), &sde, &delta(&sde)?, data, draws, rng)
}

/// The loss `−mean ELBO` with the drift-matching term as the DSM loss at one `(t, ε)` per
/// point (the reconstruction and prior terms are constants of the fixed schedule, kept so that
/// the loss is the negative ELBO).
pub struct SmObjective {
    /// The model.
    pub model: SmModel,
    /// Draws per validation point.
    pub val_draws: usize,
}

impl Objective for SmObjective {
    fn parameters(&self) -> Vec<(String, Var)> {
        sorted_vars(&self.model.vars)
    }

    fn loss(&mut self, batch: &Tensor, rng: &mut TrainRng) -> Result<BatchLoss> {
        let (t, eps) = draw_t_eps(rng, batch.dim(0)?, None, batch.dtype(), batch.device())?;
        let schedule = self.model.sde.schedule();
        let reconstruction = schedule
            .marginal(batch, Time::Scalar(1.0), false)?
            .expected_gaussian_log_likelihood(batch, &delta(&self.model.sde)?)?
            .mean_all()?;
        let prior_kl = schedule
            .marginal(batch, Time::Scalar(0.0), false)?
            .kl_to_standard_normal()?
            .mean_all()?;
        let diffusion = dsm_loss(&self.model.sde, batch, &t, &eps)?.mean_all()?;
        let loss = ((&prior_kl + &diffusion)? - &reconstruction)?;
        Ok(BatchLoss {
            loss,
            metrics: vec![
                ("reconstruction", reconstruction),
                ("prior_kl", prior_kl),
                ("diffusion", diffusion),
            ],
        })
    }

    fn validate(&mut self, data: &Tensor, rng: &mut TrainRng) -> Result<Validation> {
        Ok(evaluate_elbo(&self.model, data, self.val_draws, rng)?.to_validation())
    }
}

/// What the score-matching run produced.
#[derive(Debug)]
pub struct SmOutcome {
    /// The trained model.
    pub model: SmModel,
    /// The training curve and timings.
    pub history: TrainHistory,
    /// The final validation ELBO.
    pub eval: ElboEstimate,
    /// The exact validation log-likelihood of the probability-flow ODE (RK4), with its
    /// standard error over points.
    pub val_log_likelihood: (f64, f64),
    /// Generated samples (the generative SDE by Euler–Maruyama).
    pub samples: Vec<f64>,
    /// Kolmogorov–Smirnov distance between the samples and the validation set.
    pub ks: f64,
    /// Seconds of the final evaluation and sampling.
    pub eval_seconds: f64,
}

/// The exact log-likelihood of `data` `(n, 1)` under the probability-flow ODE, in chunks: mean
/// and standard error over points.
pub fn flow_log_likelihood(model: &SmModel, data: &Tensor, n_steps: usize) -> Result<(f64, f64)> {
    let sde = model.sde.detached()?;
    mean_se_over_points(data, |chunk| {
        Ok(ScoreFlow(&sde).log_likelihood(chunk, OdeMethod::Rk4, n_steps)?)
    })
}

/// Runs the score-matching experiment: trains, evaluates the ELBO and the exact likelihood,
/// samples.
pub fn run(
    config: &SmConfig,
    data: &Dataset,
    device: &Device,
    on_epoch: impl FnMut(&Evaluation),
) -> Result<SmOutcome> {
    let model = build_model(config, device)?;
    let mut objective = SmObjective {
        model: model.clone(),
        val_draws: config.train_val_draws,
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
    let mut rng = TrainRng::seed_from_u64(config.train.seed ^ 0x5c0_e7a1);
    let eval = evaluate_elbo(&model, &val, config.eval_draws, &mut rng)?;
    let val_log_likelihood = flow_log_likelihood(&model, &val, config.n_steps)?;
    let sde = model.sde.detached()?;
    let samples = last_to_host(&sample_sde(
        &sde,
        config.n_samples,
        config.n_steps,
        (config.dtype, device),
        &mut rng,
        false,
    )?)?;
    let ks = ks_distance(&samples, &data.validation);
    Ok(SmOutcome {
        model,
        history,
        eval,
        val_log_likelihood,
        samples,
        ks,
        eval_seconds: t0.elapsed().as_secs_f64(),
    })
}
