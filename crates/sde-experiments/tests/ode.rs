//! The ODE experiment: training improves the likelihood, is reproducible, rejects bad input.

use candle_core::{DType, Device};
use sde_experiments::{ode, train::TrainConfig, Dataset, LaplaceMixture};
use sde_variational::optim::{sorted_vars, AdamConfig};

fn small_config() -> ode::OdeConfig {
    let mut c = ode::OdeConfig::reference();
    c.train = TrainConfig {
        epochs: 3,
        batch_size: 100,
        adam: AdamConfig {
            lr: 1e-2,
            ..AdamConfig::default()
        },
        validate_every: 3,
        ..TrainConfig::default()
    };
    c.widths = vec![2, 32, 32, 1];
    c.n_steps = 20;
    c
}

fn small_data() -> Dataset {
    Dataset::draw(&LaplaceMixture::paper(), 400, 500, 1).unwrap()
}

#[test]
fn population_log_likelihood_matches_math_md() {
    // docs/MATH.md §9 gives −2.98755 to 5 decimals; Simpson with h = 1e-3 is exact to ~1e-10.
    let v = LaplaceMixture::paper().expected_log_likelihood();
    assert!((v - -2.98755).abs() < 1e-5, "{v}");
}

#[test]
fn the_three_data_sets_have_their_exact_population_log_likelihoods() {
    use sde_experiments::Distribution;
    // Laplace(0, 1): −(1 + ln 2); N(−1, 2²): −½ ln(2πe·4).
    let laplace = Distribution::by_name("laplace").unwrap();
    let exact = -(1.0 + 2f64.ln());
    assert!((laplace.expected_log_likelihood() - exact).abs() < 1e-8);
    let gaussian = Distribution::by_name("gaussian").unwrap();
    let exact = -0.5 * (8.0 * std::f64::consts::PI * std::f64::consts::E).ln();
    assert!((gaussian.expected_log_likelihood() - exact).abs() < 1e-12);
    // A large sample's mean log-density approaches the population value (SE ≈ 0.7/√20000).
    for d in [
        laplace,
        gaussian,
        Distribution::by_name("laplace-mixture").unwrap(),
    ] {
        let data = Dataset::draw(&d, 20_000, 1, 5).unwrap();
        let gap = d.mean_log_likelihood(&data.train) - d.expected_log_likelihood();
        assert!(gap.abs() < 0.02, "{d:?}: {gap}");
        // Densities integrate to one (trapezoid on [−40, 40]).
        let h = 1e-3;
        let mass: f64 = (0..80_000)
            .map(|i| d.density(-40.0 + h * i as f64) * h)
            .sum();
        assert!((mass - 1.0).abs() < 1e-5, "{d:?}: {mass}");
    }
    let e = Distribution::by_name("cauchy").unwrap_err().to_string();
    assert!(e.contains("data") && e.contains("cauchy"), "{e}");
}

#[test]
fn short_training_improves_and_is_reproducible() {
    let data = small_data();
    let config = small_config();
    let (model, _) = ode::build_model(&config, &Device::Cpu).unwrap();
    let val = sde_experiments::train::column(&data.validation, DType::F32, &Device::Cpu).unwrap();
    let (before, _) =
        ode::mean_log_likelihood(&model, &val, config.train_method, config.n_steps).unwrap();
    let a = ode::run(&config, &data, &Device::Cpu, |_| {}).unwrap();
    let b = ode::run(&config, &data, &Device::Cpu, |_| {}).unwrap();
    let after = a.val_ll_train_method.0;
    // 12 Adam steps at lr 1e-2 move a random net (≈ −4.7 nats on this wide mixture) by far
    // more than 0.2 nats; the improvement is measured on held-out data.
    assert!(after > before + 0.2, "before {before}, after {after}");
    assert_eq!(a.history.curve, b.history.curve, "same seed, same numbers");
    assert_eq!(a.val_ll_eval_method, b.val_ll_eval_method);
}

#[test]
fn bad_input_is_an_error() {
    let data = small_data();
    let mut c = small_config();
    c.train.batch_size = 0;
    let e = ode::run(&c, &data, &Device::Cpu, |_| {})
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "invalid batch_size: 0 (must be between 1 and the training set size)"
    );
    c.train.batch_size = 401;
    assert!(ode::run(&c, &data, &Device::Cpu, |_| {})
        .unwrap_err()
        .to_string()
        .contains("batch_size: 401"));
    let mut c = small_config();
    c.train.adam.lr = 0.0;
    assert!(ode::run(&c, &data, &Device::Cpu, |_| {})
        .unwrap_err()
        .to_string()
        .contains("lr: 0"));
    let mut c = small_config();
    c.n_steps = 0;
    assert!(ode::run(&c, &data, &Device::Cpu, |_| {})
        .unwrap_err()
        .to_string()
        .contains("n_steps: 0"));
    let c = small_config();
    let mut bad = data.clone();
    bad.train[3] = f64::NAN;
    assert!(ode::run(&c, &bad, &Device::Cpu, |_| {})
        .unwrap_err()
        .to_string()
        .contains("train: NaN at index 3"));
    let empty = Dataset {
        train: vec![],
        validation: data.validation.clone(),
    };
    assert!(ode::run(&c, &empty, &Device::Cpu, |_| {}).is_err());
    assert!(Dataset::draw(&LaplaceMixture::paper(), 0, 10, 0).is_err());
    assert!(LaplaceMixture::new(vec![0.0], -1.0)
        .unwrap_err()
        .to_string()
        .contains("scale: -1"));
}

/// The flat parameters of an outcome, as bits.
fn parameter_bits(outcome: &ode::OdeOutcome) -> Vec<u64> {
    sorted_vars(&outcome.vars)
        .iter()
        .flat_map(|(_, v)| {
            v.as_tensor()
                .to_dtype(DType::F64)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f64>())
                .unwrap()
        })
        .map(f64::to_bits)
        .collect()
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sde-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn an_interrupted_run_resumed_ends_bit_identical() {
    let data = small_data();
    let dir = temp_dir("resume");
    let mut config = small_config();
    config.train.epochs = 6;
    config.train.validate_every = 2;
    let full = ode::run(&config, &data, &Device::Cpu, |_| {}).unwrap();

    // The same run, interrupted during epoch 5 (after the checkpoint of epoch 4).
    config.train.checkpoint = Some(dir.join("ode.safetensors"));
    let crashed = std::panic::catch_unwind(|| {
        ode::run(&config, &data, &Device::Cpu, |e| {
            assert!(e.epoch < 5, "simulated crash");
        })
    });
    assert!(crashed.is_err());
    config.train.resume = true;
    let mut seen = vec![];
    let resumed = ode::run(&config, &data, &Device::Cpu, |e| seen.push(e.epoch)).unwrap();
    assert_eq!(seen, vec![5, 6], "only the missing epochs are trained");
    assert_eq!(resumed.history.resumed_from, 4);
    // Every epoch of the curve (losses, metrics, gradient norms, validations) and the final
    // parameters are bit-identical to the uninterrupted run's.
    assert_eq!(resumed.history.curve, full.history.curve);
    assert_eq!(parameter_bits(&resumed), parameter_bits(&full));
    assert_eq!(resumed.val_ll_eval_method, full.val_ll_eval_method);

    // Resuming a finished run trains nothing and restores exactly the saved weights.
    let again = ode::run(&config, &data, &Device::Cpu, |_| {
        panic!("nothing left to train")
    })
    .unwrap();
    assert_eq!(parameter_bits(&again), parameter_bits(&full));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn checkpoints_every_n_epochs_resume_bit_identically_between_validations() {
    let data = small_data();
    let dir = temp_dir("resume-every");
    let mut config = small_config();
    config.train.epochs = 6;
    config.train.validate_every = 2;
    config.train.checkpoint_every = Some(3);
    let full = ode::run(&config, &data, &Device::Cpu, |_| {}).unwrap();
    // Interrupted during epoch 5: the last checkpoint is epoch 3's, not validation epoch 4's.
    config.train.checkpoint = Some(dir.join("ode.safetensors"));
    let crashed = std::panic::catch_unwind(|| {
        ode::run(&config, &data, &Device::Cpu, |e| {
            assert!(e.epoch < 5, "simulated crash");
        })
    });
    assert!(crashed.is_err());
    config.train.resume = true;
    let mut seen = vec![];
    let resumed = ode::run(&config, &data, &Device::Cpu, |e| seen.push(e.epoch)).unwrap();
    assert_eq!(seen, vec![4, 5, 6]);
    assert_eq!(resumed.history.resumed_from, 3);
    assert_eq!(resumed.history.curve, full.history.curve);
    assert_eq!(parameter_bits(&resumed), parameter_bits(&full));
    config.train.checkpoint_every = Some(0);
    assert!(ode::run(&config, &data, &Device::Cpu, |_| {})
        .unwrap_err()
        .to_string()
        .contains("checkpoint_every"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_mismatched_or_corrupt_checkpoint_is_refused() {
    let data = small_data();
    let dir = temp_dir("refuse");
    let path = dir.join("ode.safetensors");
    let mut config = small_config();
    config.train.epochs = 2;
    config.train.validate_every = 1;
    config.train.checkpoint = Some(path.clone());
    ode::run(&config, &data, &Device::Cpu, |_| {}).unwrap();
    config.train.resume = true;
    config.train.epochs = 3;

    // Another learning rate, another solver, other data: each refused, naming the cause.
    let mut other = config.clone();
    other.train.adam.lr = 2e-2;
    let e = ode::run(&other, &data, &Device::Cpu, |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("configuration changed"), "{e}");
    let mut other = config.clone();
    other.n_steps += 1;
    assert!(ode::run(&other, &data, &Device::Cpu, |_| {}).is_err());
    let other_data = Dataset::draw(&LaplaceMixture::paper(), 400, 500, 2).unwrap();
    assert!(ode::run(&config, &other_data, &Device::Cpu, |_| {}).is_err());

    // One flipped byte in the middle of the file.
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let e = ode::run(&config, &data, &Device::Cpu, |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("corrupt"), "{e}");
    // Truncated.
    std::fs::write(&path, &bytes[..mid]).unwrap();
    assert!(ode::run(&config, &data, &Device::Cpu, |_| {}).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

/// Set in the child processes of [`same_seed_same_bits_across_processes`]: where to write.
const CHILD_ENV: &str = "SDE_DETERMINISM_CHILD_OUT";

/// The bits of a short run: every curve value and every parameter, as hex.
fn run_fingerprint() -> String {
    let mut config = small_config();
    config.train.epochs = 2;
    config.train.validate_every = 1;
    let out = ode::run(&config, &small_data(), &Device::Cpu, |_| {}).unwrap();
    let mut words: Vec<u64> = parameter_bits(&out);
    for e in &out.history.curve {
        words.push(e.train_loss.to_bits());
        words.push(e.grad_norm.to_bits());
        words.extend(e.validation_value().map(f64::to_bits));
    }
    words.iter().map(|w| format!("{w:016x}")).collect()
}

#[test]
fn same_seed_same_bits_across_processes() {
    if let Some(out) = std::env::var_os(CHILD_ENV) {
        std::fs::write(out, run_fingerprint()).unwrap();
        return;
    }
    let dir = temp_dir("determinism");
    let exe = std::env::current_exe().unwrap();
    let mut prints = vec![];
    for i in 0..2 {
        let out = dir.join(format!("child{i}.txt"));
        let status = std::process::Command::new(&exe)
            .args([
                "same_seed_same_bits_across_processes",
                "--exact",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &out)
            .status()
            .unwrap();
        assert!(status.success());
        prints.push(std::fs::read_to_string(&out).unwrap());
    }
    assert!(!prints[0].is_empty());
    assert_eq!(prints[0], prints[1], "two processes, same seed, same bits");
    assert_eq!(prints[0], run_fingerprint(), "and the same as this process");
    std::fs::remove_dir_all(&dir).ok();
}
