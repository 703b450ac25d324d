//! The paper's VDM experiment (`docs/REFERENCE.md` §3, paper Figure 2): a variational diffusion
//! model with a learned linear log-SNR schedule and a signal-prediction network with a skip
//! connection, trained by maximising its ELBO — the SDE ELBO of [`sde_variational::vdm`].

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::SeedableRng;
use sde_variational::optim::{sorted_vars, AdamConfig};
use sde_variational::vdm::{drift_matching_closed_form, VdmSde, VpSchedule};
use sde_variational::{Activation, Mlp, MlpConfig, Time, VariationalProcess};

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::evaluate::{ks_distance, last_to_host, sample_sde, to_host};
use crate::sde::{draw_t_eps, evaluate_process_elbo, ElboEstimate};
use crate::train::{
    column, train, BatchLoss, Evaluation, Objective, TrainConfig, TrainHistory, TrainRng,
    Validation,
};

/// Settings of the VDM experiment. [`VdmConfig::reference`] is `docs/REFERENCE.md` §3.
#[derive(Debug, Clone, PartialEq)]
pub struct VdmConfig {
    /// Optimiser and schedule (gradient-norm clipping at 1.0).
    pub train: TrainConfig,
    /// Widths of the signal-prediction network `M` (input `[x, t]`).
    pub widths: Vec<usize>,
    /// Initial log-SNR at t = 0 and t = 1 (both learned).
    pub lambda: (f64, f64),
    /// Draws of `(t, ε)` per validation point in the periodic validations.
    pub train_val_draws: usize,
    /// Draws per point in the final evaluation (stratified in `t`).
    pub eval_draws: usize,
    /// Euler–Maruyama steps for sampling.
    pub n_steps: usize,
    /// Number of generated samples.
    pub n_samples: usize,
    /// Seed of the network's initialisation.
    pub init_seed: u64,
    /// Floating-point type.
    pub dtype: DType,
}

impl VdmConfig {
    /// `docs/REFERENCE.md` §3: log-SNR from −5 to 5, both learned; `ŷ = x + M(x, t)` with a 2-64-64-1
    /// tanh `M`; Adam lr 1e-3, gradient-norm clipping 1.0, 2,000 epochs of batch 125.
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
            init_seed: 3,
            dtype: DType::F32,
        }
    }

    fn check(&self) -> Result<()> {
        crate::error::check_counts(&[
            ("eval_draws", self.eval_draws),
            ("train_val_draws", self.train_val_draws),
            ("n_steps", self.n_steps),
            ("n_samples", self.n_samples),
        ])?;
        Ok(())
    }

    fn fingerprint(&self) -> impl serde::Serialize {
        (
            "vdm",
            self.widths.clone(),
            (self.lambda.0.to_bits(), self.lambda.1.to_bits()),
            self.init_seed,
            self.train_val_draws,
            format!("{:?}", self.dtype),
        )
    }
}

/// The VDM: its generative SDE (schedule and network) and its variables.
#[derive(Clone)]
pub struct VdmModel {
    /// The generative SDE; its schedule is also the variational process.
    pub sde: VdmSde,
    /// All variables (`vdm.m.params`, `vdm.lambda0`, `vdm.lambda1`).
    pub vars: VarMap,
}

impl std::fmt::Debug for VdmModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VdmModel")
            .field("sde", &self.sde)
            .finish_non_exhaustive()
    }
}

impl VdmModel {
    /// The likelihood width `b_1` of the schedule at t = 1, `(1, 1)`.
    pub fn delta(&self) -> Result<Tensor> {
        let (_, b, _) = self.sde.schedule().coefficients(Time::Scalar(1.0))?;
        Ok(b)
    }

    /// The learned schedule's endpoints `(λ₀, λ₁)`.
    pub fn endpoints(&self) -> Result<(f64, f64)> {
        let (l0, l1) = self.sde.schedule().endpoints();
        let v =
            |t: &Tensor| -> Result<f64> { Ok(to_host(t)?.first().copied().unwrap_or(f64::NAN)) };
        Ok((v(l0)?, v(l1)?))
    }
}

/// Builds the network and the schedule for `config`.
pub fn build_model(config: &VdmConfig, device: &Device) -> Result<VdmModel> {
    config.check()?;
    let vars = VarMap::new();
    let mut rng = TrainRng::seed_from_u64(config.init_seed);
    let net = Mlp::new(
        &MlpConfig::new(config.widths.clone(), Activation::Identity),
        &vars,
        "vdm.m",
        config.dtype,
        device,
        &mut rng,
    )?;
    let (l0, l1): (Var, Var) =
        VpSchedule::vars(config.lambda.0, config.lambda.1, config.dtype, device)?;
    {
        let mut data = vars
            .data()
            .lock()
            .map_err(|_| Error::invalid("vars", "poisoned", "lock"))?;
        data.insert("vdm.lambda0".to_string(), l0.clone());
        data.insert("vdm.lambda1".to_string(), l1.clone());
    }
    let schedule = VpSchedule::new(l0.as_tensor().clone(), l1.as_tensor().clone())?;
    Ok(VdmModel {
        sde: VdmSde::new(schedule, net)?,
        vars,
    })
}

/// The VDM's validation ELBO with `draws` stratified draws per point (the general SDE-ELBO
/// code with the VP schedule as the variational process).
pub fn evaluate_elbo(
    model: &VdmModel,
    data: &Tensor,
    draws: usize,
    rng: &mut TrainRng,
) -> Result<ElboEstimate> {
    let sde = model.sde.detached()?;
    let delta = model.delta()?.detach();
    evaluate_process_elbo(sde.schedule(), &sde, &delta, data, draws, rng)
}

/// The loss `−mean ELBO_VDM` (closed-form reconstruction and prior, drift matching in its
/// closed form `½ SNR'(t)(y − ŷ)²` at one `(t, ε)` per point), with its terms as metrics.
pub struct VdmObjective {
    /// The model.
    pub model: VdmModel,
    /// Draws per point in validation.
    pub val_draws: usize,
}

impl Objective for VdmObjective {
    fn parameters(&self) -> Vec<(String, Var)> {
        sorted_vars(&self.model.vars)
    }

    fn loss(&mut self, batch: &Tensor, rng: &mut TrainRng) -> Result<BatchLoss> {
        let (t, eps) = draw_t_eps(rng, batch.dim(0)?, None, batch.dtype(), batch.device())?;
        let schedule = self.model.sde.schedule();
        let q1 = schedule.marginal(batch, Time::Scalar(1.0), false)?;
        let q0 = schedule.marginal(batch, Time::Scalar(0.0), false)?;
        let reconstruction = q1
            .expected_gaussian_log_likelihood(batch, &self.model.delta()?)?
            .mean_all()?;
        let prior_kl = q0.kl_to_standard_normal()?.mean_all()?;
        let diffusion = drift_matching_closed_form(&self.model.sde, batch, &t, &eps)?.mean_all()?;
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

/// What the VDM experiment produced.
#[derive(Debug)]
pub struct VdmOutcome {
    /// The trained model.
    pub model: VdmModel,
    /// The training curve and timings.
    pub history: TrainHistory,
    /// The final validation ELBO with `eval_draws` draws per point.
    pub eval: ElboEstimate,
    /// Generated samples.
    pub samples: Vec<f64>,
    /// Kolmogorov–Smirnov distance between the samples and the validation set.
    pub ks: f64,
    /// Seconds of the final evaluation and sampling.
    pub eval_seconds: f64,
}

/// Samples of the VDM: `x_0 ~ N(0, 1)`, `n_steps` Euler–Maruyama steps; with `record`, paths.
pub fn sample(
    sde: &VdmSde,
    n: usize,
    n_steps: usize,
    rng: &mut TrainRng,
    record: bool,
) -> Result<Vec<Tensor>> {
    let sde = sde.detached()?;
    let net = sde.net();
    sample_sde(&sde, n, n_steps, (net.dtype(), net.device()), rng, record)
}

/// Runs the VDM experiment on `data`: trains, evaluates, samples.
pub fn run(
    config: &VdmConfig,
    data: &Dataset,
    device: &Device,
    on_epoch: impl FnMut(&Evaluation),
) -> Result<VdmOutcome> {
    let model = build_model(config, device)?;
    let mut objective = VdmObjective {
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
    let mut rng = TrainRng::seed_from_u64(config.train.seed ^ 0x0d_e7a1);
    let eval = evaluate_elbo(&model, &val, config.eval_draws, &mut rng)?;
    let last = sample(
        &model.sde,
        config.n_samples,
        config.n_steps,
        &mut rng,
        false,
    )?;
    let samples = last_to_host(&last)?;
    let ks = ks_distance(&samples, &data.validation);
    Ok(VdmOutcome {
        model,
        history,
        eval,
        samples,
        ks,
        eval_seconds: t0.elapsed().as_secs_f64(),
    })
}
