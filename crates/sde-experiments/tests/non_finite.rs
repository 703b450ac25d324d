//! A non-finite training figure stops training with an error naming the epoch, the batch and
//! the term; the last good checkpoint stays on disk and a resumed run continues from it.

use candle_core::{DType, Device, Tensor, Var};
use sde_experiments::train::{train, BatchLoss, Metric, Objective, TrainConfig, Validation};
use sde_experiments::{Dataset, LaplaceMixture, TrainRng};

/// A least-squares fit of one parameter whose "drift" metric turns NaN at one (epoch, batch).
struct Poisoned {
    w: Var,
    calls: usize,
    per_epoch: usize,
    poison_at: Option<(usize, usize)>,
}

impl Objective for Poisoned {
    fn parameters(&self) -> Vec<(String, Var)> {
        vec![("w".into(), self.w.clone())]
    }

    fn loss(&mut self, batch: &Tensor, _rng: &mut TrainRng) -> sde_experiments::Result<BatchLoss> {
        let (epoch, b) = (self.calls / self.per_epoch + 1, self.calls % self.per_epoch);
        self.calls += 1;
        let loss = batch.broadcast_sub(self.w.as_tensor())?.sqr()?.mean_all()?;
        let bad = self.poison_at == Some((epoch, b));
        let drift = if bad {
            loss.affine(f64::NAN, 0.0)?
        } else {
            loss.clone()
        };
        Ok(BatchLoss {
            loss,
            metrics: vec![("drift", drift)],
        })
    }

    fn validate(
        &mut self,
        data: &Tensor,
        _rng: &mut TrainRng,
    ) -> sde_experiments::Result<Validation> {
        let l = data.broadcast_sub(self.w.as_tensor())?.sqr()?.mean_all()?;
        Ok(Validation {
            metrics: vec![Metric::lower("loss", l.to_scalar::<f64>()?, None)],
        })
    }
}

#[test]
fn a_nan_term_names_epoch_batch_and_term_and_the_last_checkpoint_resumes() {
    let data = Dataset::draw(&LaplaceMixture::paper(), 100, 50, 9).unwrap();
    let dir = std::env::temp_dir().join(format!("sde-nonfinite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = TrainConfig {
        epochs: 5,
        batch_size: 25,
        validate_every: 1,
        checkpoint: Some(dir.join("poisoned.safetensors")),
        ..TrainConfig::default()
    };
    let w = || Var::from_tensor(&Tensor::zeros((1, 1), DType::F64, &Device::Cpu).unwrap()).unwrap();
    let mut objective = Poisoned {
        w: w(),
        calls: 0,
        per_epoch: 4,
        poison_at: Some((3, 2)),
    };
    let e = train(
        &mut objective,
        &data,
        &config,
        &"poisoned",
        DType::F64,
        &Device::Cpu,
        |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("drift") && e.contains("epoch 3") && e.contains("batch 2"),
        "{e}"
    );

    // The checkpoint of epoch 2 survived; resuming with the fault gone continues from it and
    // trains only epochs 3 to 5.
    config.resume = true;
    let mut fixed = Poisoned {
        w: w(),
        calls: 8,
        per_epoch: 4,
        poison_at: None,
    };
    let mut seen = vec![];
    let history = train(
        &mut fixed,
        &data,
        &config,
        &"poisoned",
        DType::F64,
        &Device::Cpu,
        |e| seen.push(e.epoch),
    )
    .unwrap();
    assert_eq!(history.resumed_from, 2);
    assert_eq!(seen, vec![3, 4, 5]);
    assert!(history.curve.iter().all(|e| e.train_loss.is_finite()));
    std::fs::remove_dir_all(&dir).ok();
}

mod corners {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Any data set (empty, a single point, NaN or inf inside) and any batch size train or
        /// give a named error; nothing panics, and a finished run's curve is finite.
        #[test]
        fn any_data_and_batch_size_train_or_give_a_named_error(
            train_data in prop::collection::vec(prop_oneof![8 => -10.0f64..10.0, 1 => Just(f64::NAN), 1 => Just(f64::INFINITY)], 0..6),
            val_data in prop::collection::vec(-10.0f64..10.0, 0..4),
            batch_size in 0usize..8,
            epochs in 0usize..3,
        ) {
            let data = Dataset { train: train_data, validation: val_data };
            let config = TrainConfig { epochs, batch_size, validate_every: 1, ..TrainConfig::default() };
            let w = Var::from_tensor(&Tensor::zeros((1, 1), DType::F64, &Device::Cpu).unwrap()).unwrap();
            let mut objective = Poisoned { w, calls: 0, per_epoch: usize::MAX, poison_at: None };
            match train(&mut objective, &data, &config, &"corners", DType::F64, &Device::Cpu, |_| {}) {
                Ok(h) => {
                    prop_assert!(h.curve.iter().all(|e| e.train_loss.is_finite()));
                    prop_assert_eq!(h.curve.len(), epochs);
                }
                Err(e) => {
                    let m = e.to_string();
                    prop_assert!(m.starts_with("invalid ") || m.contains("non-finite"), "{}", m);
                }
            }
        }
    }
}
