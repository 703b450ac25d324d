//! A reusable training loop: Adam, shuffled mini-batches, periodic validation, progress
//! callbacks and checkpoints (REFERENCE.md, "Shared setting").

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::data::Dataset;
use crate::error::{Error, Result};

/// Optimiser and schedule settings. Defaults follow the reference code's shared setting:
/// Adam (β1 0.9, β2 0.999, ε 1e-8), batch size 125, shuffled every epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Number of passes over the training set.
    pub epochs: usize,
    /// Mini-batch size (the last, smaller batch of an epoch is dropped when it does not
    /// divide the data; the reference's 1,000 / 125 divides).
    pub batch_size: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// Decoupled weight decay (AdamW); 0 gives plain Adam.
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value, if set.
    pub grad_clip: Option<f64>,
    /// Validate every this many epochs (and after the last).
    pub validate_every: usize,
    /// Seed of the shuffling and of every Monte-Carlo draw in the losses.
    pub seed: u64,
    /// Save the parameters here (safetensors) at every validation, if set, with the epoch
    /// and training curve beside it (the same path with extension `json`).
    pub checkpoint: Option<PathBuf>,
    /// Start from the checkpoint, if one exists: its parameters, epoch and curve. Adam's
    /// moment estimates are not saved and restart from zero, so a resumed run is close to,
    /// not identical with, an uninterrupted one.
    pub resume: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 200,
            batch_size: 125,
            lr: 1e-3,
            weight_decay: 0.0,
            grad_clip: None,
            validate_every: 10,
            seed: 0,
            checkpoint: None,
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
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid("lr", self.lr, "must be finite and positive"));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::invalid(
                "weight_decay",
                self.weight_decay,
                "must be finite and non-negative",
            ));
        }
        if let Some(c) = self.grad_clip {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::invalid(
                    "grad_clip",
                    c,
                    "must be finite and positive",
                ));
            }
        }
        if self.validate_every == 0 {
            return Err(Error::invalid("validate_every", 0, "must be at least 1"));
        }
        Ok(())
    }
}

/// What a model must provide to be trained by [`train`].
pub trait Objective {
    /// The loss to minimise on a batch of data points of shape `(batch, 1)`: a scalar tensor
    /// built from the model's variables. `rng` supplies every Monte-Carlo draw.
    fn loss(&mut self, batch: &Tensor, rng: &mut StdRng) -> Result<Tensor>;
    /// The validation figure (higher is better, e.g. mean log-likelihood) on `(n, 1)` data.
    fn validate(&mut self, data: &Tensor, rng: &mut StdRng) -> Result<f64>;
}

/// One point of the training curve.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evaluation {
    /// Epochs completed.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// The validation figure, when this epoch was validated.
    pub validation: Option<f64>,
}

/// The outcome of [`train`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrainHistory {
    /// One entry per epoch.
    pub curve: Vec<Evaluation>,
    /// Wall time of the whole loop (validation included), seconds.
    pub seconds: f64,
    /// Wall time spent validating, seconds.
    pub validation_seconds: f64,
}

impl TrainHistory {
    /// The last validation figure.
    pub fn last_validation(&self) -> Option<f64> {
        self.curve.iter().rev().find_map(|e| e.validation)
    }
}

/// A column tensor `(n, 1)` of `values` in `dtype`.
pub fn column(values: &[f64], dtype: DType, device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(values, (values.len(), 1), device)?.to_dtype(dtype)?)
}

/// Trains `objective`'s variables `vars` on `data.train`, validating on `data.validation`.
/// `on_epoch` sees every epoch's [`Evaluation`] (for a progress bar); library code prints
/// nothing. A non-finite loss stops training with [`Error::Diverged`].
pub fn train<O: Objective>(
    objective: &mut O,
    vars: &VarMap,
    data: &Dataset,
    config: &TrainConfig,
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
    let vars_list: Vec<Var> = vars.all_vars();
    let mut opt = AdamW::new(
        vars_list.clone(),
        ParamsAdamW {
            lr: config.lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: config.weight_decay,
        },
    )?;
    let validation_t = column(validation, dtype, device)?;
    let mut order: Vec<usize> = Vec::with_capacity(train.len());
    let mut batch = vec![0.0; config.batch_size];
    let n_batches = train.len() / config.batch_size;
    let mut curve = match (&config.checkpoint, config.resume) {
        (Some(path), true) if path.exists() => load_checkpoint(vars, path)?,
        _ => Vec::with_capacity(config.epochs),
    };
    let start = Instant::now();
    let mut validation_seconds = 0.0;
    for epoch in curve.len() + 1..=config.epochs {
        // One RNG per epoch, derived from the seed: a run resumed at any epoch draws the same
        // batches and Monte-Carlo samples as an uninterrupted one.
        let mut rng =
            StdRng::seed_from_u64(config.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ epoch as u64);
        order.clear();
        order.extend(0..train.len());
        order.shuffle(&mut rng);
        let mut total = 0.0;
        for b in 0..n_batches {
            for (slot, &i) in batch.iter_mut().zip(&order[b * config.batch_size..]) {
                *slot = train[i];
            }
            let loss = objective.loss(&column(&batch, dtype, device)?, &mut rng)?;
            let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !value.is_finite() {
                return Err(Error::Diverged { epoch });
            }
            total += value;
            let mut grads = loss.backward()?;
            if let Some(max_norm) = config.grad_clip {
                clip_grad_norm(&mut grads, &vars_list, max_norm)?;
            }
            opt.step(&grads)?;
        }
        let validate = epoch % config.validate_every == 0 || epoch == config.epochs;
        let validation = if validate {
            let t0 = Instant::now();
            let v = objective.validate(&validation_t, &mut rng)?;
            validation_seconds += t0.elapsed().as_secs_f64();
            Some(v)
        } else {
            None
        };
        let e = Evaluation {
            epoch,
            train_loss: total / n_batches as f64,
            validation,
        };
        on_epoch(&e);
        curve.push(e);
        if let (true, Some(path)) = (validate, &config.checkpoint) {
            save_checkpoint(vars, path, &curve)?;
        }
    }
    Ok(TrainHistory {
        curve,
        seconds: start.elapsed().as_secs_f64(),
        validation_seconds,
    })
}

fn checkpoint_error(path: &std::path::Path, message: String) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        source: candle_core::Error::Msg(message),
    }
}

/// Saves the parameters to `path` and the curve so far beside it (`path` with extension
/// `json`); the JSON is written last, so a crash between the two leaves the older pair.
fn save_checkpoint(vars: &VarMap, path: &std::path::Path, curve: &[Evaluation]) -> Result<()> {
    vars.save(path).map_err(|source| Error::Checkpoint {
        path: path.display().to_string(),
        source,
    })?;
    let json = serde_json::to_string(curve).map_err(|e| checkpoint_error(path, e.to_string()))?;
    std::fs::write(path.with_extension("json"), json)
        .map_err(|e| checkpoint_error(path, e.to_string()))
}

/// Loads the parameters saved at `path` into `vars` and returns the curve saved beside them.
fn load_checkpoint(vars: &VarMap, path: &std::path::Path) -> Result<Vec<Evaluation>> {
    let json = std::fs::read_to_string(path.with_extension("json"))
        .map_err(|e| checkpoint_error(path, format!("reading its curve: {e}")))?;
    let curve: Vec<Evaluation> =
        serde_json::from_str(&json).map_err(|e| checkpoint_error(path, e.to_string()))?;
    // A `VarMap` clone shares its variables: loading through it sets the caller's.
    vars.clone()
        .load(path)
        .map_err(|source| Error::Checkpoint {
            path: path.display().to_string(),
            source,
        })?;
    Ok(curve)
}

fn check_data(name: &'static str, data: &[f64]) -> Result<()> {
    if let Some(&v) = data.iter().find(|v| !v.is_finite()) {
        return Err(Error::invalid(name, v, "data must be finite"));
    }
    Ok(())
}

/// Scales all gradients so that their global L2 norm is at most `max_norm`.
fn clip_grad_norm(
    grads: &mut candle_core::backprop::GradStore,
    vars: &[Var],
    max_norm: f64,
) -> Result<()> {
    let mut sq = 0.0;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += g
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
        }
    }
    let norm = sq.sqrt();
    if norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), g.affine(scale, 0.0)?);
            }
        }
    }
    Ok(())
}
