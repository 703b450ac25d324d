//! The paper's ODE experiment (docs/REFERENCE.md §1, paper Figure 1 left): a continuous
//! normalizing flow trained by maximising the exact log-likelihood through the augmented ODE.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::SeedableRng;
use sde_solvers::OdeMethod;
use sde_variational::optim::{sorted_vars, AdamConfig};
use sde_variational::{Activation, Mlp, MlpConfig, NeuralOde};

use crate::data::Dataset;
use crate::error::Result;
use crate::evaluate::mean_se_over_points;
use crate::train::{
    column, train, BatchLoss, Evaluation, Metric, Objective, TrainConfig, TrainHistory, TrainRng,
    Validation,
};

/// Settings of the ODE experiment. [`OdeConfig::reference`] is docs/REFERENCE.md §1.
#[derive(Debug, Clone, PartialEq)]
pub struct OdeConfig {
    /// Optimiser and schedule.
    pub train: TrainConfig,
    /// Widths of the drift network, input `[x, t]` to output `x`.
    pub widths: Vec<usize>,
    /// Steps of the training solver on [0, 1] (99: a grid of 100 points).
    pub n_steps: usize,
    /// Solver used in the training loss and the periodic validation (RK2 midpoint).
    pub train_method: OdeMethod,
    /// Solver of the final evaluation (RK4).
    pub eval_method: OdeMethod,
    /// Seed of the network's initialisation.
    pub init_seed: u64,
    /// Floating-point type of the network.
    pub dtype: DType,
}

impl OdeConfig {
    /// docs/REFERENCE.md §1: 2-64-64-1 tanh drift, 99 RK2 steps, Adam lr 1e-2, 200 epochs,
    /// batch 125; validated every 20 epochs (the reference: every 10; each validation of 8,000
    /// points costs ≈ 0.5 s and does not change training); evaluated with RK4 at the end.
    pub fn reference() -> Self {
        Self {
            train: TrainConfig {
                epochs: 200,
                adam: AdamConfig {
                    lr: 1e-2,
                    ..AdamConfig::default()
                },
                validate_every: 20,
                ..TrainConfig::default()
            },
            widths: vec![2, 64, 64, 1],
            n_steps: 99,
            train_method: OdeMethod::Midpoint,
            eval_method: OdeMethod::Rk4,
            init_seed: 1,
            dtype: DType::F32,
        }
    }

    /// What shapes the computation besides the [`TrainConfig`]: the configuration fingerprint
    /// of its checkpoints.
    fn fingerprint(&self) -> impl serde::Serialize {
        (
            "ode",
            self.widths.clone(),
            self.n_steps,
            format!("{:?}", self.train_method),
            self.init_seed,
            format!("{:?}", self.dtype),
        )
    }
}

/// The loss `−mean log p_1(y)` of a neural ODE, and its validation figure `mean log p_1(y)`
/// with its standard error over points.
#[derive(Clone)]
pub struct CnfObjective {
    /// The model.
    pub model: NeuralOde,
    /// Its variables.
    pub vars: VarMap,
    /// Solver of loss and validation.
    pub method: OdeMethod,
    /// Its number of steps.
    pub n_steps: usize,
}

impl std::fmt::Debug for CnfObjective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CnfObjective")
            .field("model", &self.model)
            .field("method", &self.method)
            .field("n_steps", &self.n_steps)
            .finish_non_exhaustive()
    }
}

impl Objective for CnfObjective {
    fn parameters(&self) -> Vec<(String, Var)> {
        sorted_vars(&self.vars)
    }
    fn loss(&mut self, batch: &Tensor, _rng: &mut TrainRng) -> Result<BatchLoss> {
        let ll = self
            .model
            .log_likelihood(batch, self.method, self.n_steps)?;
        Ok(BatchLoss::new(ll.mean_all()?.neg()?))
    }
    fn validate(&mut self, data: &Tensor, _rng: &mut TrainRng) -> Result<Validation> {
        let (m, se) = mean_log_likelihood(&self.model, data, self.method, self.n_steps)?;
        Ok(Validation {
            metrics: vec![Metric::higher("log_likelihood", m, Some(se))],
        })
    }
}

/// Mean log-likelihood of `data` `(n, 1)` under `model` and its standard error over points,
/// computed in chunks of 2,000 points without building a gradient graph.
pub fn mean_log_likelihood(
    model: &NeuralOde,
    data: &Tensor,
    method: OdeMethod,
    n_steps: usize,
) -> Result<(f64, f64)> {
    let model = model.detached()?;
    mean_se_over_points(data, |chunk| {
        Ok(model.log_likelihood(chunk, method, n_steps)?)
    })
}

/// What the ODE experiment produced.
pub struct OdeOutcome {
    /// The trained model.
    pub model: NeuralOde,
    /// Its variables (for checkpoints).
    pub vars: VarMap,
    /// The training curve and timings.
    pub history: TrainHistory,
    /// Final validation log-likelihood with the training solver (RK2), and its standard
    /// error over points.
    pub val_ll_train_method: (f64, f64),
    /// Final validation log-likelihood with the evaluation solver (RK4), and its standard
    /// error over points.
    pub val_ll_eval_method: (f64, f64),
}

impl std::fmt::Debug for OdeOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OdeOutcome")
            .field("model", &self.model)
            .field("history", &self.history)
            .field("val_ll_train_method", &self.val_ll_train_method)
            .field("val_ll_eval_method", &self.val_ll_eval_method)
            .finish_non_exhaustive()
    }
}

/// Builds the drift network for `config` (seeded PyTorch-style initialisation).
pub fn build_model(config: &OdeConfig, device: &Device) -> Result<(NeuralOde, VarMap)> {
    let vars = VarMap::new();
    let mut rng = TrainRng::seed_from_u64(config.init_seed);
    let mlp = Mlp::new(
        &MlpConfig::new(config.widths.clone(), Activation::Identity),
        &vars,
        "drift",
        config.dtype,
        device,
        &mut rng,
    )?;
    Ok((NeuralOde::new(mlp)?, vars))
}

/// Runs the ODE experiment on `data`: trains, then evaluates on the validation set with the
/// training solver and with the evaluation solver.
pub fn run(
    config: &OdeConfig,
    data: &Dataset,
    device: &Device,
    on_epoch: impl FnMut(&Evaluation),
) -> Result<OdeOutcome> {
    let (model, vars) = build_model(config, device)?;
    let mut objective = CnfObjective {
        model: model.clone(),
        vars: vars.clone(),
        method: config.train_method,
        n_steps: config.n_steps,
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
    let val = column(&data.validation, config.dtype, device)?;
    let val_ll_train_method =
        mean_log_likelihood(&model, &val, config.train_method, config.n_steps)?;
    let val_ll_eval_method = mean_log_likelihood(&model, &val, config.eval_method, config.n_steps)?;
    Ok(OdeOutcome {
        model,
        vars,
        history,
        val_ll_train_method,
        val_ll_eval_method,
    })
}
