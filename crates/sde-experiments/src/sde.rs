//! The paper's SDE experiment (`docs/REFERENCE.md` §2, paper Figure 2): a learned drift and
//! diffusion, a Gaussian variational process from two networks and a learned likelihood width,
//! trained by maximising the SDE ELBO simulation-free (one `t` and `ε` per data point).
//!
//! The variant [`Family::SinhArcsinh`] (paper §6) puts a learned skew and tail weight on the
//! same Gaussian process ([`sde_variational::flow::SinhArcsinh`]): `q_1` stays Gaussian, the
//! marginals before it need not be.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use sde_variational::elbo::elbo_rule;
use sde_variational::elbo::{diffusion_term, sde_elbo};
use sde_variational::flow::{SinhArcsinh, SinhArcsinhMarginal};
use sde_variational::network_elbo::{network_gaussian_diffusion, network_gaussian_elbo};
use sde_variational::optim::{sorted_vars, AdamConfig, WeightDecay};
use sde_variational::{
    Activation, FlowMarginal, GaussianLikelihood, GaussianMarginal, GenerativeSde, Likelihood, Mlp,
    MlpConfig, NetworkGaussian, NeuralSde, Time, VariationalProcess,
};

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::evaluate::{ks_distance, last_to_host, sample_sde, to_host as host};
use crate::train::{
    column, train, BatchLoss, Evaluation, Metric, Objective, TrainConfig, TrainHistory, TrainRng,
    Validation,
};

/// Settings of the SDE experiment. [`SdeConfig::reference`] is `docs/REFERENCE.md` §2.
#[derive(Debug, Clone, PartialEq)]
pub struct SdeConfig {
    /// Optimiser and schedule.
    pub train: TrainConfig,
    /// Widths of all four networks (drift, diffusion, `A`, `B`), input `[·, t]`.
    pub widths: Vec<usize>,
    /// Initial likelihood width `β₁` (learned).
    pub beta1_init: f64,
    /// Draws of `(t, ε)` per validation point in the periodic validations.
    pub train_val_draws: usize,
    /// Draws of `(t, ε)` per validation point in the final evaluation (stratified in `t`).
    pub eval_draws: usize,
    /// Euler–Maruyama steps on [0, 1] for sampling.
    pub n_steps: usize,
    /// Number of generated samples for the sample-quality figures.
    pub n_samples: usize,
    /// Seed of the networks' initialisation.
    pub init_seed: u64,
    /// Floating-point type of the networks.
    pub dtype: DType,
    /// The family of the variational marginals.
    pub family: Family,
}

/// The family of the variational marginals `q_t(· | y)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum Family {
    /// `N(α, β²)` from the networks `A`, `B` (the paper's experiment).
    #[default]
    Gaussian,
    /// The sinh–arcsinh flow of that Gaussian with skew and log tail weight from a third
    /// network `[y, t] → 2` of the same hidden widths, both multiplied by `1 − t`.
    SinhArcsinh,
}

impl SdeConfig {
    /// The reference settings with the sinh–arcsinh variational flow ([`Family::SinhArcsinh`]).
    pub fn sinh_arcsinh() -> Self {
        Self {
            family: Family::SinhArcsinh,
            ..Self::reference()
        }
    }

    /// `docs/REFERENCE.md` §2: four 2-64-64-1 tanh networks, `β₁` started at 0.1, Adam lr 1e-3
    /// with PyTorch-style (coupled) weight decay 1e-6, 2,000 epochs of batch 125; validated
    /// every 100 epochs with 2 draws per point (checkpointed every 500), evaluated at the end
    /// with 20; sampled with 99 Euler–Maruyama steps.
    pub fn reference() -> Self {
        Self {
            train: TrainConfig {
                epochs: 2000,
                adam: AdamConfig {
                    lr: 1e-3,
                    weight_decay: WeightDecay::Coupled(1e-6),
                    ..AdamConfig::default()
                },
                validate_every: 100,
                checkpoint_every: Some(500),
                ..TrainConfig::default()
            },
            widths: vec![2, 64, 64, 1],
            beta1_init: 0.1,
            train_val_draws: 2,
            eval_draws: 20,
            n_steps: 99,
            n_samples: 8000,
            init_seed: 2,
            dtype: DType::F32,
            family: Family::Gaussian,
        }
    }

    fn check(&self) -> Result<()> {
        crate::error::check_counts(&[
            ("eval_draws", self.eval_draws),
            ("train_val_draws", self.train_val_draws),
            ("n_steps", self.n_steps),
            ("n_samples", self.n_samples),
        ])?;
        if !(self.beta1_init.is_finite() && self.beta1_init > 0.0) {
            return Err(Error::invalid(
                "beta1_init",
                self.beta1_init,
                "must be finite and positive",
            ));
        }
        Ok(())
    }

    fn fingerprint(&self) -> impl serde::Serialize {
        (
            "sde",
            self.widths.clone(),
            self.beta1_init.to_bits(),
            self.init_seed,
            format!("{:?}", self.dtype),
            self.family,
        )
    }
}

/// The SDE model: generative SDE, variational process, their variables.
#[derive(Clone)]
pub struct SdeModel {
    /// The generative SDE (drift and diffusion networks).
    pub sde: NeuralSde,
    /// The Gaussian variational process (networks `A`, `B` and `log β₁`), or the base of the
    /// sinh–arcsinh flow.
    pub process: NetworkGaussian,
    /// The sinh–arcsinh shape network `[y, t] → (S, L)` ([`Family::SinhArcsinh`]).
    pub shape: Option<Mlp>,
    /// All variables, `log β₁` included (as `q.log_beta1`).
    pub vars: VarMap,
}

impl SdeModel {
    /// The variational process, with gradients to the variables.
    pub fn variational(&self) -> Result<SdeProcess> {
        Ok(match &self.shape {
            None => SdeProcess::Gaussian(self.process.clone()),
            Some(shape) => {
                SdeProcess::Shaped(SinhArcsinh::new(self.process.clone(), shape.clone())?)
            }
        })
    }

    /// The variational process without a gradient graph, for evaluation.
    pub fn variational_detached(&self) -> Result<SdeProcess> {
        Ok(match self.variational()? {
            SdeProcess::Gaussian(p) => SdeProcess::Gaussian(p.detached()?),
            SdeProcess::Shaped(p) => SdeProcess::Shaped(p.detached()?),
        })
    }
}

/// The SDE experiment's variational process, either family.
#[derive(Debug, Clone)]
pub enum SdeProcess {
    /// The Gaussian process of the paper.
    Gaussian(NetworkGaussian),
    /// Its sinh–arcsinh flow.
    Shaped(SinhArcsinh<NetworkGaussian>),
}

/// A marginal of [`SdeProcess`]: the Gaussian keeps its closed forms.
#[derive(Debug, Clone)]
pub enum SdeMarginal {
    /// `N(α, β²)`.
    Gaussian(GaussianMarginal),
    /// The sinh–arcsinh flow.
    Shaped(SinhArcsinhMarginal),
}

/// `$body` with `$q` bound to the marginal inside either variant.
macro_rules! either {
    ($m:expr, $q:ident => $body:expr) => {
        match $m {
            SdeMarginal::Gaussian($q) => $body,
            SdeMarginal::Shaped($q) => $body,
        }
    };
}

impl FlowMarginal for SdeMarginal {
    fn sample(&self, eps: &Tensor) -> sde_variational::Result<Tensor> {
        either!(self, q => q.sample(eps))
    }
    fn eps_of(&self, x: &Tensor) -> sde_variational::Result<Tensor> {
        either!(self, q => q.eps_of(x))
    }
    fn log_det(&self, eps: &Tensor) -> sde_variational::Result<Tensor> {
        either!(self, q => q.log_det(eps))
    }
    fn ode_drift_at_eps(&self, eps: &Tensor) -> sde_variational::Result<Tensor> {
        either!(self, q => q.ode_drift_at_eps(eps))
    }
    fn score_at_eps(&self, eps: &Tensor) -> sde_variational::Result<Tensor> {
        either!(self, q => q.score_at_eps(eps))
    }
    fn ode_drift_and_score_at_eps(
        &self,
        eps: &Tensor,
    ) -> sde_variational::Result<(Tensor, Tensor)> {
        either!(self, q => q.ode_drift_and_score_at_eps(eps))
    }
    fn kl_to_standard_normal(
        &self,
        rule: &sde_core::quadrature::Rule,
    ) -> sde_variational::Result<Tensor> {
        either!(self, q => FlowMarginal::kl_to_standard_normal(q, rule))
    }
    fn expected_log_likelihood(
        &self,
        y: &Tensor,
        likelihood: &dyn Likelihood,
        rule: &sde_core::quadrature::Rule,
    ) -> sde_variational::Result<Tensor> {
        either!(self, q => q.expected_log_likelihood(y, likelihood, rule))
    }
    fn like(&self) -> &Tensor {
        either!(self, q => q.like())
    }
    fn tile(&self, n: usize) -> sde_variational::Result<Self> {
        Ok(match self {
            SdeMarginal::Gaussian(q) => SdeMarginal::Gaussian(q.tile(n)?),
            SdeMarginal::Shaped(q) => SdeMarginal::Shaped(q.tile(n)?),
        })
    }
}

impl VariationalProcess for SdeProcess {
    type Marginal = SdeMarginal;

    fn marginal(
        &self,
        y: &Tensor,
        t: Time<'_>,
        derivatives: bool,
    ) -> sde_variational::Result<SdeMarginal> {
        Ok(match self {
            SdeProcess::Gaussian(p) => SdeMarginal::Gaussian(p.marginal(y, t, derivatives)?),
            SdeProcess::Shaped(p) => SdeMarginal::Shaped(p.marginal(y, t, derivatives)?),
        })
    }
}

impl std::fmt::Debug for SdeModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdeModel")
            .field("sde", &self.sde)
            .field("process", &self.process)
            .finish_non_exhaustive()
    }
}

/// Builds the four networks and `log β₁` for `config` (seeded PyTorch-style initialisation).
pub fn build_model(config: &SdeConfig, device: &Device) -> Result<SdeModel> {
    config.check()?;
    let vars = VarMap::new();
    let mut rng = TrainRng::seed_from_u64(config.init_seed);
    let mut net = |name: &str, output: Activation| {
        Mlp::new(
            &MlpConfig::new(config.widths.clone(), output),
            &vars,
            name,
            config.dtype,
            device,
            &mut rng,
        )
    };
    let drift = net("drift", Activation::Identity)?;
    let sigma = net("sigma", Activation::Softplus)?;
    let a = net("q.a", Activation::Identity)?;
    let b = net("q.b", Activation::Softplus)?;
    let log_beta1: Var = NetworkGaussian::log_beta1_var(config.beta1_init, config.dtype, device)?;
    vars.data()
        .lock()
        .map_err(|_| Error::invalid("vars", "poisoned", "lock"))?
        .insert("q.log_beta1".to_string(), log_beta1.clone());
    // Drawn after the paper's networks, so the Gaussian model's initialisation is unchanged.
    let shape = match config.family {
        Family::Gaussian => None,
        Family::SinhArcsinh => {
            let mut widths = config.widths.clone();
            if let Some(last) = widths.last_mut() {
                *last = 2;
            }
            Some(Mlp::new(
                &MlpConfig::new(widths, Activation::Identity),
                &vars,
                "q.shape",
                config.dtype,
                device,
                &mut rng,
            )?)
        }
    };
    Ok(SdeModel {
        sde: NeuralSde::new(drift, sigma)?,
        process: NetworkGaussian::new(a, b, log_beta1.as_tensor().clone())?,
        shape,
        vars,
    })
}

/// `(t, ε)` for `n` rows: `t` uniform on [0, 1) (stratified into `strata` equal intervals
/// when `stratum` is given: `t = (stratum + u) / strata`), `ε` standard normal, drawn on the host.
pub(crate) fn draw_t_eps(
    rng: &mut TrainRng,
    n: usize,
    stratum: Option<(usize, usize)>,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let t: Vec<f64> = (0..n)
        .map(|_| {
            let u: f64 = rng.random();
            match stratum {
                Some((k, m)) => (k as f64 + u) / m as f64,
                None => u,
            }
        })
        .collect();
    let eps: Vec<f64> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
    Ok((column(&t, dtype, device)?, column(&eps, dtype, device)?))
}

/// The validation ELBO and its terms, averaged over points and `draws` stratified draws of
/// `(t, ε)` per point.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ElboEstimate {
    /// Mean ELBO per point.
    pub elbo: f64,
    /// Its Monte-Carlo standard error (from the spread of the draws within points).
    pub se: f64,
    /// Mean reconstruction term (closed form).
    pub reconstruction: f64,
    /// Mean `KL(q_0 ‖ p_0)` (closed form).
    pub prior_kl: f64,
    /// Mean diffusion (drift-matching) term.
    pub diffusion: f64,
    /// Draws per point.
    pub draws: usize,
}

impl ElboEstimate {
    /// As validation figures: the ELBO first (the headline), then its terms.
    pub fn to_validation(&self) -> Validation {
        Validation {
            metrics: vec![
                Metric::higher("elbo", self.elbo, Some(self.se)),
                Metric::higher("reconstruction", self.reconstruction, None),
                Metric::lower("prior_kl", self.prior_kl, None),
                Metric::lower("diffusion", self.diffusion, None),
            ],
        }
    }
}

/// The SDE ELBO of `data` `(n, 1)` with `draws` draws of `(t, ε)` per point, stratified in `t`
/// (draw `k` has `t ∈ [k/draws, (k+1)/draws)`), in chunks, without a gradient graph.
pub fn evaluate_elbo(
    model: &SdeModel,
    data: &Tensor,
    draws: usize,
    rng: &mut TrainRng,
) -> Result<ElboEstimate> {
    let sde = model.sde.detached()?;
    let delta = model.process.beta1()?.detach();
    match &model.shape {
        // The paper's model: its drift-matching term through the fused path.
        None => {
            let process = model.process.detached()?;
            estimate_elbo(&process, &delta, data, draws, rng, |y, t, eps| {
                Ok(network_gaussian_diffusion(&process, &sde, y, t, eps)?)
            })
        }
        Some(_) => evaluate_process_elbo(
            &model.variational_detached()?,
            &sde,
            &delta,
            data,
            draws,
            rng,
        ),
    }
}

/// The SDE ELBO of `data` `(n, 1)` for any variational `process`, generative `model` and
/// Gaussian likelihood width `delta` (`(1, 1)`), with `draws` stratified draws of `(t, ε)` per
/// point (reconstruction and prior KL in closed form for Gaussian marginals, by the ELBO's
/// Gauss–Hermite rule otherwise); pass detached models (no gradient graph is wanted).
pub fn evaluate_process_elbo<P: VariationalProcess, G: GenerativeSde>(
    process: &P,
    sde: &G,
    delta: &Tensor,
    data: &Tensor,
    draws: usize,
    rng: &mut TrainRng,
) -> Result<ElboEstimate> {
    estimate_elbo(process, delta, data, draws, rng, |y, t, eps| {
        Ok(diffusion_term(process, sde, y, t, eps)?)
    })
}

/// [`evaluate_process_elbo`] with the drift-matching term per row from `diffusion(y, t, ε)`.
fn estimate_elbo<P: VariationalProcess>(
    process: &P,
    delta: &Tensor,
    data: &Tensor,
    draws: usize,
    rng: &mut TrainRng,
    diffusion: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
) -> Result<ElboEstimate> {
    let (n, dtype, device) = (data.dim(0)?, data.dtype(), data.device().clone());
    let likelihood = GaussianLikelihood::new(delta.clone())?;
    let (mut recon, mut kl) = (0.0, 0.0);
    let mut diff_sum = vec![0.0; n];
    let mut diff_sq = vec![0.0; n];
    let mut start = 0;
    while start < n {
        let len = 2000.min(n - start);
        let y = data.narrow(0, start, len)?;
        let q1 = process.marginal(&y, Time::Scalar(1.0), false)?;
        let q0 = process.marginal(&y, Time::Scalar(0.0), false)?;
        let rule = elbo_rule()?;
        recon += host(&q1.expected_log_likelihood(&y, &likelihood, rule)?)?
            .iter()
            .sum::<f64>();
        kl += host(&q0.kl_to_standard_normal(rule)?)?.iter().sum::<f64>();
        for k in 0..draws {
            let (t, eps) = draw_t_eps(rng, len, Some((k, draws)), dtype, &device)?;
            let d = host(&diffusion(&y, &t, &eps)?)?;
            for (i, v) in d.into_iter().enumerate() {
                diff_sum[start + i] += v;
                diff_sq[start + i] += v * v;
            }
        }
        start += len;
    }
    let nf = n as f64;
    let dk = draws as f64;
    let diffusion = diff_sum.iter().sum::<f64>() / (nf * dk);
    // MC variance of the mean: Σ_i Var_i / draws / n², Var_i the within-point sample variance.
    let mc_var: f64 = if draws > 1 {
        diff_sum
            .iter()
            .zip(&diff_sq)
            .map(|(s, q)| (q - s * s / dk) / (dk - 1.0))
            .sum::<f64>()
            / dk
            / (nf * nf)
    } else {
        f64::NAN
    };
    let (recon, kl) = (recon / nf, kl / nf);
    Ok(ElboEstimate {
        elbo: recon - kl - diffusion,
        se: mc_var.max(0.0).sqrt(),
        reconstruction: recon,
        prior_kl: kl,
        diffusion,
        draws,
    })
}

/// The loss `−mean ELBO_SDE` with one `(t, ε)` per data point, its terms as metrics, and the
/// many-draw validation ELBO.
pub struct SdeObjective {
    /// The model.
    pub model: SdeModel,
    /// Draws per point in validation.
    pub val_draws: usize,
}

impl Objective for SdeObjective {
    fn parameters(&self) -> Vec<(String, Var)> {
        sorted_vars(&self.model.vars)
    }

    fn loss(&mut self, batch: &Tensor, rng: &mut TrainRng) -> Result<BatchLoss> {
        let (t, eps) = draw_t_eps(rng, batch.dim(0)?, None, batch.dtype(), batch.device())?;
        let terms = match &self.model.shape {
            // The paper's model: the fused path (the same terms, a few ops instead of seventy).
            None => network_gaussian_elbo(&self.model.process, &self.model.sde, batch, &t, &eps)?,
            Some(_) => sde_elbo(
                &self.model.variational()?,
                &self.model.sde,
                batch,
                &t,
                &eps,
                &GaussianLikelihood::new(self.model.process.beta1()?)?,
            )?,
        };
        let loss = terms.elbo()?.mean_all()?.neg()?;
        Ok(BatchLoss {
            loss,
            metrics: vec![
                ("reconstruction", terms.reconstruction.mean_all()?),
                ("prior_kl", terms.prior_kl.mean_all()?),
                ("diffusion", terms.diffusion.mean_all()?),
            ],
        })
    }

    fn validate(&mut self, data: &Tensor, rng: &mut TrainRng) -> Result<Validation> {
        Ok(evaluate_elbo(&self.model, data, self.val_draws, rng)?.to_validation())
    }
}

/// What the SDE experiment produced: the model, its curve, the final evaluation, samples.
#[derive(Debug)]
pub struct SdeOutcome {
    /// The trained model.
    pub model: SdeModel,
    /// The training curve and timings.
    pub history: TrainHistory,
    /// The final validation ELBO with `eval_draws` draws per point.
    pub eval: ElboEstimate,
    /// Generated samples (Euler–Maruyama from `N(0, 1)`), `n_samples` of them.
    pub samples: Vec<f64>,
    /// Kolmogorov–Smirnov distance between the samples and the validation set.
    pub ks: f64,
    /// Seconds spent on the final evaluation and sampling.
    pub eval_seconds: f64,
}

/// Samples of the generative SDE: `x_0 ~ N(0, 1)`, `n_steps` Euler–Maruyama steps to t = 1;
/// with `record`, every grid state (paths).
pub fn sample(
    sde: &NeuralSde,
    n: usize,
    n_steps: usize,
    rng: &mut TrainRng,
    record: bool,
) -> Result<Vec<Tensor>> {
    let sde = sde.detached()?;
    let net = sde.drift_net();
    sample_sde(&sde, n, n_steps, (net.dtype(), net.device()), rng, record)
}

/// Runs the SDE experiment on `data`: trains, evaluates the validation ELBO with
/// `eval_draws` draws per point, and samples.
pub fn run(
    config: &SdeConfig,
    data: &Dataset,
    device: &Device,
    on_epoch: impl FnMut(&Evaluation),
) -> Result<SdeOutcome> {
    let model = build_model(config, device)?;
    let mut objective = SdeObjective {
        model: model.clone(),
        val_draws: config.train_val_draws,
    };
    let history = train(
        &mut objective,
        data,
        &config.train,
        &(config.fingerprint(), config.train_val_draws),
        config.dtype,
        device,
        on_epoch,
    )?;
    let t0 = std::time::Instant::now();
    let val = column(&data.validation, config.dtype, device)?;
    let mut rng = TrainRng::seed_from_u64(config.train.seed ^ 0x5de_e7a1);
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
    Ok(SdeOutcome {
        model,
        history,
        eval,
        samples,
        ks,
        eval_seconds: t0.elapsed().as_secs_f64(),
    })
}
