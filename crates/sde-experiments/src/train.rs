//! A reusable training loop: shuffled mini-batches, the library's Adam
//! ([`sde_variational::optim`]), periodic validation, progress callbacks and checkpoints from
//! which an interrupted run resumes bit-identically (docs/REFERENCE.md, "Shared setting").
//!
//! # Reproducibility
//!
//! Every random draw of a run — the shuffles and the Monte-Carlo draws inside the losses — comes
//! from one [`TrainRng`] (ChaCha8, whose stream is fixed by its specification, unlike `StdRng`'s)
//! seeded with [`TrainConfig::seed`]. Validation draws from its own generator derived from the
//! seed and the epoch, so how often a run validates does not change its training. A checkpoint
//! holds the parameters, the optimiser's moments and step count, the generator's exact position,
//! the epoch and the curve; resuming from it continues the very same computation.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use sde_variational::optim::{Adam, AdamConfig, AdamState, ParamMoments};

use crate::checkpoint::{config_hash, Checkpoint};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::evaluate::to_host as host;

/// The random number generator of training: ChaCha with 8 rounds, a stream fixed by its
/// specification (so a published seed keeps its meaning across `rand` releases) whose position
/// can be saved and restored exactly.
pub type TrainRng = rand_chacha::ChaCha8Rng;

/// Optimiser and schedule settings. Defaults follow the reference code's shared setting:
/// Adam (β1 0.9, β2 0.999, ε 1e-8, lr 1e-3), batch size 125, shuffled every epoch.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrainConfig {
    /// Number of passes over the training set. Not part of the configuration fingerprint: a
    /// finished run can be resumed with more epochs.
    #[serde(skip)]
    pub epochs: usize,
    /// Mini-batch size (the last, smaller batch of an epoch is dropped when it does not
    /// divide the data; the reference's 1,000 / 125 divides).
    pub batch_size: usize,
    /// Adam's settings: learning rate, weight-decay convention, gradient clipping.
    pub adam: AdamConfig,
    /// Validate every this many epochs (and after the last); checkpoints are written then.
    #[serde(skip)]
    pub validate_every: usize,
    /// Seed of the shuffling and of every Monte-Carlo draw in the losses.
    pub seed: u64,
    /// Write a checkpoint here (one safetensors file, see [`crate::checkpoint`]), if set: at
    /// every validation, or every `checkpoint_every` epochs, and after the last.
    #[serde(skip)]
    pub checkpoint: Option<PathBuf>,
    /// Checkpoint every this many epochs instead of at every validation (each write costs
    /// tens of milliseconds, mostly `fsync`; a short-stepped run validating often may prefer
    /// fewer). `None`: at every validation.
    #[serde(skip)]
    pub checkpoint_every: Option<usize>,
    /// Start from the checkpoint, if one exists. It must belong to the same configuration and
    /// data (else an error); the run then continues bit-identically.
    #[serde(skip)]
    pub resume: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 200,
            batch_size: 125,
            adam: AdamConfig::default(),
            validate_every: 10,
            seed: 0,
            checkpoint: None,
            checkpoint_every: None,
            resume: false,
        }
    }
}

impl TrainConfig {
    /// Checks the settings against a training set of `n_train` points.
    pub fn check(&self, n_train: usize) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::invalid("epochs", 0, "must be at least 1"));
        }
        if self.batch_size == 0 || self.batch_size > n_train {
            return Err(Error::invalid(
                "batch_size",
                self.batch_size,
                "must be between 1 and the training set size",
            ));
        }
        self.adam.check()?;
        if self.validate_every == 0 {
            return Err(Error::invalid("validate_every", 0, "must be at least 1"));
        }
        if self.checkpoint_every == Some(0) {
            return Err(Error::invalid("checkpoint_every", 0, "must be at least 1"));
        }
        Ok(())
    }
}

/// The loss of one batch and the named figures that make it up (the terms of an ELBO, say),
/// each a scalar tensor. The loop averages every metric over an epoch's batches.
#[derive(Debug, Clone)]
pub struct BatchLoss {
    /// The scalar to minimise, built from the objective's parameters.
    pub loss: Tensor,
    /// Named scalar figures of the batch, in a fixed order.
    pub metrics: Vec<(&'static str, Tensor)>,
}

impl BatchLoss {
    /// A loss without further metrics.
    pub fn new(loss: Tensor) -> Self {
        Self {
            loss,
            metrics: Vec::new(),
        }
    }
}

/// One validation figure with its Monte-Carlo (or over-points) standard error.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Metric {
    /// What it is, e.g. `log_likelihood`, `elbo`, `reconstruction`.
    pub name: String,
    /// Its value.
    pub value: f64,
    /// Its standard error, where one is known.
    pub se: Option<f64>,
    /// Whether a higher value is better (log-likelihoods, ELBOs) or a lower one (losses, KLs).
    pub higher_is_better: bool,
}

impl Metric {
    /// A metric where higher is better.
    pub fn higher(name: &str, value: f64, se: Option<f64>) -> Self {
        Self {
            name: name.to_string(),
            value,
            se,
            higher_is_better: true,
        }
    }

    /// A metric where lower is better.
    pub fn lower(name: &str, value: f64, se: Option<f64>) -> Self {
        Self {
            name: name.to_string(),
            value,
            se,
            higher_is_better: false,
        }
    }
}

/// A validation result: named figures, the first one the headline (what the paper reports).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Validation {
    /// The figures; `metrics[0]` is the headline.
    pub metrics: Vec<Metric>,
}

impl Validation {
    /// The headline figure.
    pub fn headline(&self) -> Option<&Metric> {
        self.metrics.first()
    }

    /// The figure named `name`.
    pub fn get(&self, name: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.name == name)
    }
}

/// What a model must provide to be trained by [`train`].
pub trait Objective {
    /// The trainable parameters, in a fixed order with unique names (the optimiser, the
    /// gradient norm and the checkpoint follow this order).
    fn parameters(&self) -> Vec<(String, Var)>;
    /// The loss to minimise on a batch of data points of shape `(batch, 1)`, with its named
    /// metrics. `rng` supplies every Monte-Carlo draw.
    fn loss(&mut self, batch: &Tensor, rng: &mut TrainRng) -> Result<BatchLoss>;
    /// Validation figures on `(n, 1)` data; `metrics[0]` is the headline.
    fn validate(&mut self, data: &Tensor, rng: &mut TrainRng) -> Result<Validation>;
}

/// One point of the training curve.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evaluation {
    /// Epochs completed.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Mean of every batch metric over the epoch, in the objective's order.
    pub train_metrics: Vec<(String, f64)>,
    /// Mean global gradient norm (before clipping) over the epoch's steps.
    pub grad_norm: f64,
    /// The validation figures, when this epoch was validated.
    pub validation: Option<Validation>,
}

impl Evaluation {
    /// The headline validation value, when this epoch was validated.
    pub fn validation_value(&self) -> Option<f64> {
        self.validation
            .as_ref()
            .and_then(Validation::headline)
            .map(|m| m.value)
    }
}

/// The outcome of [`train`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrainHistory {
    /// One entry per epoch.
    pub curve: Vec<Evaluation>,
    /// Wall time of the whole loop (validation included; a resumed run adds the time saved in
    /// its checkpoint), seconds.
    pub seconds: f64,
    /// Wall time spent validating, seconds.
    pub validation_seconds: f64,
    /// The epoch the run resumed from (0 for a fresh run).
    pub resumed_from: usize,
}

impl TrainHistory {
    /// The last headline validation figure.
    pub fn last_validation(&self) -> Option<f64> {
        self.curve
            .iter()
            .rev()
            .find_map(Evaluation::validation_value)
    }
}

/// A column tensor `(n, 1)` of `values` in `dtype`.
pub fn column(values: &[f64], dtype: DType, device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(values, (values.len(), 1), device)?.to_dtype(dtype)?)
}

/// The generator's exact position, as a checkpoint stores it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct RngState {
    seed: [u8; 32],
    stream: u64,
    /// The 128-bit word position, in decimal (JSON numbers stop at 64 bits).
    word_pos: String,
}

impl RngState {
    fn of(rng: &TrainRng) -> Self {
        Self {
            seed: rng.get_seed(),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos().to_string(),
        }
    }

    fn restore(&self, path: &Path) -> Result<TrainRng> {
        let pos: u128 = self
            .word_pos
            .parse()
            .map_err(|_| checkpoint_error(path, "its random-number state is unreadable"))?;
        let mut rng = TrainRng::from_seed(self.seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(pos);
        Ok(rng)
    }
}

/// The metadata of a training checkpoint.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct TrainMeta {
    curve: Vec<Evaluation>,
    rng: RngState,
    adam_step: u64,
    seconds: f64,
    validation_seconds: f64,
}

fn checkpoint_error(path: &Path, reason: &str) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The generator of the validation at `epoch`: independent of the training stream.
fn validation_rng(seed: u64, epoch: usize) -> TrainRng {
    let mut rng = TrainRng::seed_from_u64(seed);
    rng.set_stream(1 + epoch as u64);
    rng
}

/// Trains `objective` on `data.train`, validating on `data.validation`.
///
/// `fingerprint` is the experiment's configuration (everything that shapes the computation:
/// model settings, solver, the [`TrainConfig`]); its hash, with the data's, is stored in every
/// checkpoint, and resuming from a checkpoint of another configuration or data set is refused.
/// `on_epoch` sees every epoch's [`Evaluation`] (for a progress bar); library code prints
/// nothing. A non-finite loss, metric or gradient stops training with an error naming the
/// epoch, the batch and the figure; the last checkpoint stays on disk.
pub fn train<O: Objective>(
    objective: &mut O,
    data: &Dataset,
    config: &TrainConfig,
    fingerprint: &impl serde::Serialize,
    dtype: DType,
    device: &Device,
    mut on_epoch: impl FnMut(&Evaluation),
) -> Result<TrainHistory> {
    let (train, validation) = (&data.train, &data.validation);
    config.check(train.len())?;
    if validation.is_empty() {
        return Err(Error::invalid("validation", "[]", "must not be empty"));
    }
    check_data("train", train)?;
    check_data("validation", validation)?;
    let hash = config_hash(&(fingerprint, config, data_fingerprint(data)))?;
    let params = objective.parameters();
    let mut adam = Adam::new(params.clone(), config.adam)?;
    let mut rng = TrainRng::seed_from_u64(config.seed);
    // Grown as it goes: `epochs` is a user's number and may be absurd.
    let mut curve: Vec<Evaluation> = Vec::new();
    let (mut saved_seconds, mut validation_seconds) = (0.0, 0.0);
    if let (Some(path), true) = (&config.checkpoint, config.resume) {
        if path.exists() {
            let meta = restore(path, hash, device, &params, &mut adam)?;
            rng = meta.rng.restore(path)?;
            curve = meta.curve;
            saved_seconds = meta.seconds;
            validation_seconds = meta.validation_seconds;
        }
    }
    let resumed_from = curve.len();
    let validation_t = column(validation, dtype, device)?;
    let mut order: Vec<usize> = Vec::with_capacity(train.len());
    let mut batch = vec![0.0; config.batch_size];
    let n_batches = train.len() / config.batch_size;
    let start = Instant::now();
    for epoch in curve.len() + 1..=config.epochs {
        order.clear();
        order.extend(0..train.len());
        order.shuffle(&mut rng);
        let (mut total, mut grad_norm) = (0.0, 0.0);
        let mut metric_sums: Vec<(String, f64)> = Vec::new();
        for b in 0..n_batches {
            for (slot, &i) in batch.iter_mut().zip(&order[b * config.batch_size..]) {
                *slot = train[i];
            }
            let out = objective.loss(&column(&batch, dtype, device)?, &mut rng)?;
            let value = scalar(&out.loss)?;
            if !value.is_finite() {
                return Err(non_finite("loss", value, epoch, b));
            }
            total += value;
            for (i, (name, m)) in out.metrics.iter().enumerate() {
                let v = scalar(m)?;
                if !v.is_finite() {
                    return Err(non_finite(name, v, epoch, b));
                }
                match metric_sums.get_mut(i) {
                    Some(slot) => slot.1 += v,
                    None => metric_sums.push((name.to_string(), v)),
                }
            }
            let grads = out.loss.backward()?;
            let stats = adam.step(&grads).map_err(|e| Error::NonFinite {
                what: e.to_string(),
                epoch,
                batch: b,
            })?;
            grad_norm += stats.grad_norm;
        }
        let validate = epoch % config.validate_every == 0 || epoch == config.epochs;
        let validation = if validate {
            let t0 = Instant::now();
            let v = objective.validate(&validation_t, &mut validation_rng(config.seed, epoch))?;
            validation_seconds += t0.elapsed().as_secs_f64();
            if let Some(m) = v.metrics.iter().find(|m| !m.value.is_finite()) {
                return Err(non_finite(
                    &format!("validation {}", m.name),
                    m.value,
                    epoch,
                    0,
                ));
            }
            Some(v)
        } else {
            None
        };
        let n = n_batches as f64;
        let e = Evaluation {
            epoch,
            train_loss: total / n,
            train_metrics: metric_sums.into_iter().map(|(k, v)| (k, v / n)).collect(),
            grad_norm: grad_norm / n,
            validation,
        };
        on_epoch(&e);
        curve.push(e);
        let save_now = match config.checkpoint_every {
            None => validate,
            Some(every) => epoch % every == 0 || epoch == config.epochs,
        };
        if let (true, Some(path)) = (save_now, &config.checkpoint) {
            let meta = TrainMeta {
                curve: curve.clone(),
                rng: RngState::of(&rng),
                adam_step: adam.state().step,
                seconds: saved_seconds + start.elapsed().as_secs_f64(),
                validation_seconds,
            };
            save(path, hash, &params, &adam.state(), meta)?;
        }
    }
    Ok(TrainHistory {
        curve,
        seconds: saved_seconds + start.elapsed().as_secs_f64(),
        validation_seconds,
        resumed_from,
    })
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

fn non_finite(what: &str, value: f64, epoch: usize, batch: usize) -> Error {
    Error::NonFinite {
        what: format!("{what} = {value}"),
        epoch,
        batch,
    }
}

/// The bits of the data, so that a checkpoint cannot be resumed on other data.
fn data_fingerprint(data: &Dataset) -> (Vec<u64>, Vec<u64>) {
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect();
    (bits(&data.train), bits(&data.validation))
}

/// Writes parameters, optimiser moments and `meta` to `path` atomically.
fn save(
    path: &Path,
    hash: u64,
    params: &[(String, Var)],
    state: &AdamState,
    meta: TrainMeta,
) -> Result<()> {
    let mut tensors = Vec::with_capacity(3 * params.len());
    for ((name, var), moments) in params.iter().zip(&state.moments) {
        let shape = var.as_tensor().dims().to_vec();
        let dev = var.as_tensor().device();
        tensors.push((format!("param/{name}"), var.as_tensor().clone()));
        tensors.push((
            format!("adam.m/{name}"),
            Tensor::from_slice(&moments.m, shape.as_slice(), dev)?,
        ));
        tensors.push((
            format!("adam.v/{name}"),
            Tensor::from_slice(&moments.v, shape.as_slice(), dev)?,
        ));
    }
    Checkpoint {
        tensors,
        meta,
        config_hash: hash,
    }
    .save(path)
}

/// Loads the checkpoint at `path` into the parameters and the optimiser; returns its metadata.
fn restore(
    path: &Path,
    hash: u64,
    device: &Device,
    params: &[(String, Var)],
    adam: &mut Adam,
) -> Result<TrainMeta> {
    let ckpt: Checkpoint<TrainMeta> = Checkpoint::load(path, hash, device)?;
    let mut moments = Vec::with_capacity(params.len());
    for (name, var) in params {
        let p = ckpt.tensor(&format!("param/{name}"))?;
        let target = var.as_tensor();
        if p.dims() != target.dims() || p.dtype() != target.dtype() {
            return Err(checkpoint_error(
                path,
                "a parameter's shape or dtype differs from the model's",
            ));
        }
        var.set(p)?;
        moments.push(ParamMoments {
            name: name.clone(),
            m: host(ckpt.tensor(&format!("adam.m/{name}"))?)?,
            v: host(ckpt.tensor(&format!("adam.v/{name}"))?)?,
        });
    }
    adam.load_state(AdamState {
        step: ckpt.meta.adam_step,
        moments,
    })?;
    Ok(ckpt.meta)
}

fn check_data(name: &'static str, data: &[f64]) -> Result<()> {
    if let Some((i, &v)) = data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(Error::invalid(
            name,
            format!("{v} at index {i}"),
            "data must be finite",
        ));
    }
    Ok(())
}
