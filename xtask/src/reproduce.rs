//! `cargo xtask reproduce`: the paper's experiments end to end (docs/REFERENCE.md), with a
//! progress bar, a printed summary, `report.json` and figures under `target/reproduce/`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use sde_experiments::{
    evaluate, fm, ode, sde, sm, vdm, Dataset, Evaluation, LaplaceMixture, TrainRng,
};
use sde_solvers::OdeMethod;
use sde_variational::score_matching::ScoreFlow;
use sde_variational::{GaussianProcess, Time};
use serde_json::json;

use crate::plot::{self, Curve, Figure};

/// Options of `cargo xtask reproduce`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output folder for report.json and the figures.
    #[arg(long, default_value = "target/reproduce")]
    out: PathBuf,
    /// A shortened run (seconds, not minutes) to check that everything works.
    #[arg(long)]
    quick: bool,
    /// Seed of the data set (the reference code's sample differs anyway; the report gives the
    /// drawn sample's true log-likelihood beside the population value).
    #[arg(long, default_value_t = 0)]
    data_seed: u64,
    /// Continue an interrupted run from the checkpoints in the output folder.
    #[arg(long)]
    resume: bool,
    /// Run only these models (comma-separated): ode, sde, vdm, fm (the paper's four, the
    /// default), sm (score matching) and fm-elbo (flow matching with learned β₀, β₁ on the
    /// σ-weighted ELBO), both not in the paper.
    #[arg(long, value_delimiter = ',', default_value = "ode,sde,vdm,fm")]
    only: Vec<Model>,
}

/// The models `cargo xtask reproduce` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Model {
    /// The continuous normalizing flow (docs/REFERENCE.md §1).
    Ode,
    /// The SDE with a Gaussian variational process (docs/REFERENCE.md §2).
    Sde,
    /// The variational diffusion model (docs/REFERENCE.md §3).
    Vdm,
    /// Flow matching, judged by its exact likelihood (docs/REFERENCE.md §4).
    Fm,
    /// Denoising score matching on the VP process (VDM's network and budget).
    Sm,
    /// Flow matching with learned β₀, β₁ on the σ-weighted FM ELBO (not in the paper).
    FmElbo,
}

/// Population expected log-likelihood of the paper's mixture (docs/MATH.md §9).
const POPULATION_LL: f64 = -2.98755;

pub fn run(args: Args) -> Result<()> {
    fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let device = Device::Cpu;
    let mixture = LaplaceMixture::paper();
    let data = Dataset::paper(args.data_seed);
    let population = mixture.expected_log_likelihood();
    let train_true = mixture.mean_log_likelihood(&data.train);
    let val_true = mixture.mean_log_likelihood(&data.validation);
    println!(
        "data: {} train / {} validation points; true log-likelihood of the validation sample {val_true:.4} (population {population:.5}, docs/MATH.md {POPULATION_LL})",
        data.train.len(),
        data.validation.len()
    );

    let data_run = if args.quick {
        // A quarter of the validation set keeps the quick run's evaluations short.
        Dataset {
            train: data.train.clone(),
            validation: data.validation[..2000].to_vec(),
        }
    } else {
        data.clone()
    };
    let mut models = serde_json::Map::new();
    let t_all = Instant::now();
    if args.only.contains(&Model::Ode) {
        models.insert(
            "ode".into(),
            run_ode(&args, &mixture, &data, &data_run, &device)?,
        );
    }
    if args.only.contains(&Model::Sde) {
        models.insert(
            "sde".into(),
            run_sde(&args, &mixture, &data, &data_run, &device)?,
        );
    }
    if args.only.contains(&Model::Vdm) {
        models.insert(
            "vdm".into(),
            run_vdm(&args, &mixture, &data, &data_run, &device)?,
        );
    }
    if args.only.contains(&Model::Fm) {
        models.insert(
            "fm".into(),
            run_fm(&args, false, &mixture, &data, &data_run, &device)?,
        );
    }
    if args.only.contains(&Model::FmElbo) {
        models.insert(
            "fm_elbo".into(),
            run_fm(&args, true, &mixture, &data, &data_run, &device)?,
        );
    }
    if args.only.contains(&Model::Sm) {
        models.insert(
            "sm".into(),
            run_sm(&args, &mixture, &data, &data_run, &device)?,
        );
    }
    let report = json!({
        "quick": args.quick,
        "data": {
            "seed": args.data_seed,
            "n_train": data.train.len(),
            "n_validation": data_run.validation.len(),
            "population_log_likelihood": population,
            "train_true_log_likelihood": train_true,
            "val_true_log_likelihood": mixture.mean_log_likelihood(&data_run.validation),
        },
        "models": models,
        "total_seconds": t_all.elapsed().as_secs_f64(),
        "peak_memory_bytes": peak_memory_bytes(),
    });
    let report_path = args.out.join("report.json");
    fs::write(&report_path, serde_json::to_string_pretty(&report)?)?;
    println!(
        "wrote {} and figures; total {:.1} s; peak memory {:.0} MiB",
        report_path.display(),
        t_all.elapsed().as_secs_f64(),
        peak_memory_bytes().unwrap_or(0) as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}

/// The ODE experiment (docs/REFERENCE.md §1): trains, evaluates, draws its figures; returns its
/// part of the report.
fn run_ode(
    args: &Args,
    mixture: &LaplaceMixture,
    data: &Dataset,
    data_run: &Dataset,
    device: &Device,
) -> Result<serde_json::Value> {
    let device = device.clone();
    let mut config = ode::OdeConfig::reference();
    config.train.checkpoint = Some(checkpoint(args, "ode"));
    config.train.resume = args.resume;
    if args.quick {
        config.train.epochs = 20;
        config.train.validate_every = 5;
    }

    println!(
        "ODE (CNF, exact likelihood): {} epochs, {} RK2 steps, lr {}",
        config.train.epochs, config.n_steps, config.train.adam.lr
    );
    let bar = progress(config.train.epochs as u64);
    let outcome = ode::run(&config, data_run, &device, |e: &Evaluation| {
        show_epoch(&bar, e, "loss", 1.0)
    })?;
    bar.finish();
    let (ll_rk4, se_rk4) = outcome.val_ll_eval_method;
    let (ll_rk2, se_rk2) = outcome.val_ll_train_method;
    let train_seconds = outcome.history.seconds;
    println!(
        "ODE: validation log-likelihood RK4 {ll_rk4:.4} ± {se_rk4:.4}, RK2 {ll_rk2:.4} ± {se_rk2:.4} (sample's true value {:.4}); training {train_seconds:.1} s ({:.1} s validating)",
        mixture.mean_log_likelihood(&data_run.validation),
        outcome.history.validation_seconds
    );

    // Figures.
    let t0 = Instant::now();
    let xs = y_grid();
    let grid = Tensor::from_slice(&xs, (xs.len(), 1), &device)?.to_dtype(config.dtype)?;
    let model = outcome.model.detached()?;
    let model_ll = host(&model.log_likelihood(&grid, OdeMethod::Rk4, config.n_steps)?)?;
    let density_png = density_png(
        &args.out,
        "ode_density.png",
        "ODE (CNF): learned density",
        mixture,
        &data.train,
        "CNF (RK4)".into(),
        xs.iter()
            .zip(&model_ll)
            .map(|(&x, &l)| (x, l.exp()))
            .collect(),
    )?;
    let mut rng = TrainRng::seed_from_u64(7);
    let paths = model.sample(100, OdeMethod::Rk4, config.n_steps, &mut rng, true)?;
    let paths_png = paths_png(
        &args.out,
        "ode_paths.png",
        "ODE (CNF): sample paths, prior (t = 0) to data (t = 1)",
        &paths,
    )?;
    let curve_png = training_png(
        &args.out,
        "ode_training.png",
        "ODE (CNF): training curve",
        "log-likelihood",
        &outcome.history.curve,
        ("train (minus loss)", |e: &Evaluation| -e.train_loss),
        "validation (RK2)".into(),
    )?;
    let figure_seconds = t0.elapsed().as_secs_f64();

    Ok(json!({
        "val_log_likelihood": ll_rk4,
        "val_log_likelihood_se": se_rk4,
        "val_log_likelihood_rk2": ll_rk2,
        "val_log_likelihood_rk2_se": se_rk2,
        "eval_method": "rk4",
        "n_steps": config.n_steps,
        "epochs": config.train.epochs,
        "lr": config.train.adam.lr,
        "batch_size": config.train.batch_size,
        "train_seconds": train_seconds,
        "validation_seconds": outcome.history.validation_seconds,
        "figure_seconds": figure_seconds,
        "curve": outcome.history.curve,
        "figures": [file_name(&density_png), file_name(&paths_png), file_name(&curve_png)],
        "reference": {"val_log_likelihood_rk2": -3.0249, "val_log_likelihood_rk4_correct_times": -3.0259, "train_seconds": 208.0, "peak_memory_gib": 16.1},
    }))
}

/// Bandwidth of the kernel density estimates of generated samples: a quarter of the Laplace
/// peaks' scale, wide enough for smooth curves from 8,000 samples.
const KDE_BANDWIDTH: f64 = 0.25;

/// Five data values whose variational processes the figures show.
const SHOWN_Y: [f64; 5] = [-8.0, -4.0, 0.0, 4.0, 8.0];
const Y_COLORS: [(u8, u8, u8); 5] = [
    (200, 40, 40),
    (220, 130, 20),
    (40, 140, 60),
    (30, 90, 180),
    (130, 50, 160),
];

/// The SDE experiment (docs/REFERENCE.md §2): trains, evaluates the validation ELBO with many
/// draws, samples, draws its figures; returns its part of the report.
fn run_sde(
    args: &Args,
    mixture: &LaplaceMixture,
    data: &Dataset,
    data_run: &Dataset,
    device: &Device,
) -> Result<serde_json::Value> {
    let mut config = sde::SdeConfig::reference();
    config.train.checkpoint = Some(checkpoint(args, "sde"));
    config.train.resume = args.resume;
    if args.quick {
        config.train.epochs = 100;
        config.train.validate_every = 50;
        config.eval_draws = 4;
        config.n_samples = 2000;
    }
    println!(
        "SDE (learned drift, diffusion and Gaussian variational process; SDE ELBO): {} epochs, lr {}, {:?}",
        config.train.epochs, config.train.adam.lr, config.train.adam.weight_decay
    );
    let bar = progress(config.train.epochs as u64);
    let outcome = sde::run(&config, data_run, device, |e: &Evaluation| {
        show_epoch(&bar, e, "ELBO", -1.0)
    })?;
    bar.finish();
    let ev = outcome.eval;
    let val_true = mixture.mean_log_likelihood(&data_run.validation);
    println!(
        "SDE: validation ELBO {:.4} ± {:.4} ({} draws per point; reconstruction {:.3}, KL {:.3}, diffusion {:.3}); sample's true log-likelihood {val_true:.4}; KS {:.4}; training {:.1} s ({:.1} s validating), evaluation and sampling {:.1} s",
        ev.elbo, ev.se, ev.draws, ev.reconstruction, ev.prior_kl, ev.diffusion, outcome.ks,
        outcome.history.seconds, outcome.history.validation_seconds, outcome.eval_seconds
    );

    let t0 = Instant::now();
    let density_png = density_png(
        &args.out,
        "sde_density.png",
        "SDE: density of generated samples",
        mixture,
        &data.train,
        format!(
            "{} SDE samples (KDE, h = {KDE_BANDWIDTH})",
            outcome.samples.len()
        ),
        kde_curve(&outcome.samples),
    )?;
    let mut rng = TrainRng::seed_from_u64(7);
    let paths = sde::sample(&outcome.model.sde, 100, config.n_steps, &mut rng, true)?;
    let paths_png = paths_png(
        &args.out,
        "sde_paths.png",
        "SDE: sample paths (Euler–Maruyama), prior to data",
        &paths,
    )?;

    // α(y, t), β(y, t) and σ(α(y, t), t) over t for a few y.
    let model = &outcome.model;
    let process = model.process.detached()?;
    let sde_model = model.sde.detached()?;
    let ys = Tensor::from_slice(&SHOWN_Y, (SHOWN_Y.len(), 1), device)?.to_dtype(config.dtype)?;
    let ts: Vec<f64> = (0..=100).map(|i| i as f64 / 100.0).collect();
    let mut alpha = vec![Vec::new(); SHOWN_Y.len()];
    let mut beta = vec![Vec::new(); SHOWN_Y.len()];
    let mut sigma = vec![Vec::new(); SHOWN_Y.len()];
    for &t in &ts {
        let q = process.marginal(&ys, Time::Scalar(t), false)?;
        let (_, s, _) = sde_model.fields(&q.alpha, Time::Scalar(t))?;
        for (i, ((a, b), sg)) in host(&q.alpha)?
            .into_iter()
            .zip(host(&q.beta)?)
            .zip(host(&s)?)
            .enumerate()
        {
            alpha[i].push((t, a));
            beta[i].push((t, b));
            sigma[i].push((t, sg));
        }
    }
    let mut figures = vec![file_name(&density_png), file_name(&paths_png)];
    for (name, title, values) in [
        ("sde_alpha.png", "SDE: variational mean α(y, t)", &alpha),
        ("sde_beta.png", "SDE: variational std β(y, t)", &beta),
        (
            "sde_sigma.png",
            "SDE: diffusion σ(α(y, t), t) along the mean",
            &sigma,
        ),
    ] {
        let curves: Vec<Curve> = values
            .iter()
            .zip(SHOWN_Y)
            .zip(Y_COLORS)
            .map(|((pts, y), c)| Curve::new(format!("y = {y}"), pts.clone(), c))
            .collect();
        let png = args.out.join(name);
        plot::line_figure(
            &png,
            &Figure::new(title, "t", name[4..name.len() - 4].to_string()),
            &curves,
        )?;
        figures.push(file_name(&png));
    }
    let curve_png = training_png(
        &args.out,
        "sde_training.png",
        "SDE: training curve",
        "ELBO",
        &outcome.history.curve,
        ("train (one draw per point)", |e: &Evaluation| -e.train_loss),
        format!("validation ({} draws per point)", config.train_val_draws),
    )?;
    figures.push(file_name(&curve_png));
    let beta1 = host(&process.beta1()?)?.first().copied();
    Ok(json!({
        "val_elbo": ev.elbo,
        "val_elbo_se": ev.se,
        "eval_draws": ev.draws,
        "terms": {
            "reconstruction": ev.reconstruction,
            "prior_kl": ev.prior_kl,
            "diffusion": ev.diffusion,
        },
        "beta1": beta1,
        "epochs": config.train.epochs,
        "train_seconds": outcome.history.seconds,
        "validation_seconds": outcome.history.validation_seconds,
        "eval_seconds": outcome.eval_seconds,
        "figure_seconds": t0.elapsed().as_secs_f64(),
        "samples": {
            "n": outcome.samples.len(),
            "ks": outcome.ks,
            "w1": evaluate::wasserstein1(&outcome.samples, &data_run.validation),
        },
        "curve": outcome.history.curve,
        "figures": figures,
        "reference": {"val_elbo_20_draws": -3.038, "val_elbo_20_draws_se": 0.008, "train_seconds": 63.0},
    }))
}

/// The VDM experiment (docs/REFERENCE.md §3): trains, evaluates the validation ELBO with many draws,
/// samples, draws its figures; returns its part of the report.
fn run_vdm(
    args: &Args,
    mixture: &LaplaceMixture,
    data: &Dataset,
    data_run: &Dataset,
    device: &Device,
) -> Result<serde_json::Value> {
    let mut config = vdm::VdmConfig::reference();
    config.train.checkpoint = Some(checkpoint(args, "vdm"));
    config.train.resume = args.resume;
    if args.quick {
        config.train.epochs = 300;
        config.train.validate_every = 100;
        config.eval_draws = 4;
        config.n_samples = 2000;
    }
    println!(
        "VDM (learned log-SNR schedule, signal prediction ŷ = x + M(x, t)): {} epochs, lr {}, clipping {:?}",
        config.train.epochs, config.train.adam.lr, config.train.adam.max_grad_norm
    );
    let bar = progress(config.train.epochs as u64);
    let outcome = vdm::run(&config, data_run, device, |e: &Evaluation| {
        show_epoch(&bar, e, "ELBO", -1.0)
    })?;
    bar.finish();
    let ev = outcome.eval;
    let (l0, l1) = outcome.model.endpoints()?;
    println!(
        "VDM: validation ELBO {:.4} ± {:.4} ({} draws per point; reconstruction {:.3}, KL {:.3}, diffusion {:.3}); schedule (λ0, λ1) = ({l0:.3}, {l1:.3}); KS {:.4}; training {:.1} s ({:.1} s validating)",
        ev.elbo, ev.se, ev.draws, ev.reconstruction, ev.prior_kl, ev.diffusion, outcome.ks,
        outcome.history.seconds, outcome.history.validation_seconds
    );
    let t0 = Instant::now();
    let density_png = density_png(
        &args.out,
        "vdm_density.png",
        "VDM: density of generated samples",
        mixture,
        &data.train,
        format!(
            "{} VDM samples (KDE, h = {KDE_BANDWIDTH})",
            outcome.samples.len()
        ),
        kde_curve(&outcome.samples),
    )?;
    let mut rng = TrainRng::seed_from_u64(7);
    let paths = vdm::sample(&outcome.model.sde, 100, config.n_steps, &mut rng, true)?;
    let paths_png = paths_png(
        &args.out,
        "vdm_paths.png",
        "VDM: sample paths (Euler–Maruyama), prior to data",
        &paths,
    )?;
    let schedule_png = args.out.join("vdm_schedule.png");
    let line = |a: f64, b: f64| -> Vec<(f64, f64)> {
        (0..=100)
            .map(|i| {
                let t = i as f64 / 100.0;
                (t, (1.0 - t) * a + t * b)
            })
            .collect()
    };
    plot::line_figure(
        &schedule_png,
        &Figure::new("VDM: log-SNR schedule λ(t)", "t", "log SNR"),
        &[
            Curve::new(
                format!("initial ({}, {})", config.lambda.0, config.lambda.1),
                line(config.lambda.0, config.lambda.1),
                (120, 120, 120),
            ),
            Curve::new(
                format!("learned ({l0:.2}, {l1:.2})"),
                line(l0, l1),
                (200, 40, 40),
            ),
        ],
    )?;
    let curve_png = training_png(
        &args.out,
        "vdm_training.png",
        "VDM: training curve",
        "ELBO",
        &outcome.history.curve,
        ("train (one draw per point)", |e: &Evaluation| -e.train_loss),
        format!("validation ({} draws per point)", config.train_val_draws),
    )?;
    Ok(json!({
        "val_elbo": ev.elbo,
        "val_elbo_se": ev.se,
        "eval_draws": ev.draws,
        "terms": {
            "reconstruction": ev.reconstruction,
            "prior_kl": ev.prior_kl,
            "diffusion": ev.diffusion,
        },
        "schedule": {"lambda_0": l0, "lambda_1": l1},
        "epochs": config.train.epochs,
        "train_seconds": outcome.history.seconds,
        "validation_seconds": outcome.history.validation_seconds,
        "eval_seconds": outcome.eval_seconds,
        "figure_seconds": t0.elapsed().as_secs_f64(),
        "samples": {
            "n": outcome.samples.len(),
            "ks": outcome.ks,
            "w1": evaluate::wasserstein1(&outcome.samples, &data_run.validation),
        },
        "curve": outcome.history.curve,
        "figures": [file_name(&density_png), file_name(&paths_png), file_name(&schedule_png), file_name(&curve_png)],
        "reference": {"val_elbo_20_draws": -3.320, "val_elbo_20_draws_se": 0.015, "lambda": [-5.41, 4.35], "train_seconds": 55.0},
    }))
}

/// The flow-matching experiment (docs/REFERENCE.md §4): trains, evaluates the exact likelihood
/// through the probability-flow ODE, samples, draws its figures; returns its part of the report.
fn run_fm(
    args: &Args,
    learned: bool,
    mixture: &LaplaceMixture,
    data: &Dataset,
    data_run: &Dataset,
    device: &Device,
) -> Result<serde_json::Value> {
    let (mut config, name, label) = if learned {
        (fm::FmConfig::learned(), "fm_elbo", "FM-ELBO")
    } else {
        (fm::FmConfig::reference(), "fm", "FM")
    };
    config.train.checkpoint = Some(checkpoint(args, name));
    config.train.resume = args.resume;
    if args.quick {
        config.train.epochs = 300;
        config.train.validate_every = 100;
        config.n_samples = 2000;
    }
    let (b0, b1) = config.betas;
    println!(
        "{label} (flow matching, x_t = t y + β_t ε, β from ({b0}, {b1}){}, {:?} weighting): {} epochs, lr {}",
        if learned { " learned" } else { " fixed" },
        config.weighting,
        config.train.epochs,
        config.train.adam.lr
    );
    let bar = progress(config.train.epochs as u64);
    let outcome = fm::run(&config, data_run, device, |e: &Evaluation| {
        show_epoch(&bar, e, "loss", 1.0)
    })?;
    bar.finish();
    let (ll, se) = outcome.val_log_likelihood;
    let (b0, b1) = outcome.betas;
    println!(
        "{label}: exact validation log-likelihood (RK4) {ll:.4} ± {se:.4}; loss {:.4}; ELBO (δ = {}) {:.3} ± {:.3}; β = ({b0:.4}, {b1:.4}); KS {:.4} (ODE samples), {:.4} (SDE samples); training {:.1} s ({:.1} s validating), evaluation and sampling {:.1} s",
        outcome.val.loss.0, config.delta, outcome.val.elbo.0, outcome.val.elbo.1, outcome.ks, outcome.sde_ks,
        outcome.history.seconds, outcome.history.validation_seconds, outcome.eval_seconds
    );
    let t0 = Instant::now();
    let xs = y_grid();
    let grid = Tensor::from_slice(&xs, (xs.len(), 1), device)?.to_dtype(config.dtype)?;
    let flow = outcome.model.flow()?.detached()?;
    let model_ll = host(&flow.log_likelihood(&grid, OdeMethod::Rk4, config.n_steps)?)?;
    let density_png = density_png(
        &args.out,
        &format!("{name}_density.png"),
        &format!("{label}: learned density (exact, RK4)"),
        mixture,
        &data.train,
        "flow matching (RK4)".into(),
        xs.iter()
            .zip(&model_ll)
            .map(|(&x, &l)| (x, l.exp()))
            .collect(),
    )?;
    let mut rng = TrainRng::seed_from_u64(7);
    let paths = flow.sample(100, OdeMethod::Rk4, config.n_steps, &mut rng, true)?;
    let paths_png = paths_png(
        &args.out,
        &format!("{name}_paths.png"),
        &format!("{label}: sample paths (RK4), prior to data"),
        &paths,
    )?;
    let curve_png = training_png(
        &args.out,
        &format!("{name}_training.png"),
        &format!("{label}: training curve"),
        "loss",
        &outcome.history.curve,
        ("train", |e: &Evaluation| e.train_loss),
        format!("validation ({} draws per point)", config.val_draws),
    )?;
    Ok(json!({
        "val_log_likelihood": ll,
        "val_log_likelihood_se": se,
        "eval_method": "rk4",
        "val_loss": outcome.val.loss.0,
        "val_loss_se": outcome.val.loss.1,
        "val_elbo": outcome.val.elbo.0,
        "val_elbo_se": outcome.val.elbo.1,
        "delta": config.delta,
        "betas": [b0, b1],
        "learned_betas": config.learn_betas,
        "weighting": format!("{:?}", config.weighting),
        "epochs": config.train.epochs,
        "train_seconds": outcome.history.seconds,
        "validation_seconds": outcome.history.validation_seconds,
        "eval_seconds": outcome.eval_seconds,
        "figure_seconds": t0.elapsed().as_secs_f64(),
        "samples": {
            "n": outcome.samples.len(),
            "ks": outcome.ks,
            "w1": evaluate::wasserstein1(&outcome.samples, &data_run.validation),
        },
        "sde_samples": {
            "n": outcome.sde_samples.len(),
            "ks": outcome.sde_ks,
            "w1": evaluate::wasserstein1(&outcome.sde_samples, &data_run.validation),
            "sampler": "Euler–Maruyama on v + ½σ²∇log q (score from velocity), σ = β_t",
        },
        "curve": outcome.history.curve,
        "figures": [file_name(&density_png), file_name(&paths_png), file_name(&curve_png)],
        "reference": {"val_log_likelihood_rk4": -3.023, "val_log_likelihood_se": 0.007, "train_loss_end": 8.9, "elbo_delta_0.01": -14.1, "train_seconds": 57.0},
    }))
}

/// The score-matching run (not in the paper; VDM's network and budget): trains, evaluates its
/// ELBO and its exact probability-flow likelihood, samples, draws its figures.
fn run_sm(
    args: &Args,
    mixture: &LaplaceMixture,
    data: &Dataset,
    data_run: &Dataset,
    device: &Device,
) -> Result<serde_json::Value> {
    let mut config = sm::SmConfig::reference();
    config.train.checkpoint = Some(checkpoint(args, "sm"));
    config.train.resume = args.resume;
    if args.quick {
        config.train.epochs = 300;
        config.train.validate_every = 100;
        config.eval_draws = 4;
        config.n_samples = 2000;
    }
    println!(
        "SM (denoising score matching, VP log-SNR {:?} fixed): {} epochs, lr {}",
        config.lambda, config.train.epochs, config.train.adam.lr
    );
    let bar = progress(config.train.epochs as u64);
    let outcome = sm::run(&config, data_run, device, |e: &Evaluation| {
        show_epoch(&bar, e, "ELBO", -1.0)
    })?;
    bar.finish();
    let ev = outcome.eval;
    let (ll, se) = outcome.val_log_likelihood;
    println!(
        "SM: validation ELBO {:.4} ± {:.4}; exact probability-flow log-likelihood (RK4) {ll:.4} ± {se:.4}; KS {:.4}; training {:.1} s, evaluation and sampling {:.1} s",
        ev.elbo, ev.se, outcome.ks, outcome.history.seconds, outcome.eval_seconds
    );
    let t0 = Instant::now();
    let xs = y_grid();
    let grid = Tensor::from_slice(&xs, (xs.len(), 1), device)?.to_dtype(config.dtype)?;
    let sde_model = outcome.model.sde.detached()?;
    let model_ll =
        host(&ScoreFlow(&sde_model).log_likelihood(&grid, OdeMethod::Rk4, config.n_steps)?)?;
    let density_png = density_png(
        &args.out,
        "sm_density.png",
        "Score matching: probability-flow density (exact, RK4)",
        mixture,
        &data.train,
        "score model (RK4)".into(),
        xs.iter()
            .zip(&model_ll)
            .map(|(&x, &l)| (x, l.exp()))
            .collect(),
    )?;
    let mut rng = TrainRng::seed_from_u64(7);
    let paths = evaluate::sample_sde(
        &sde_model,
        100,
        config.n_steps,
        (config.dtype, device),
        &mut rng,
        true,
    )?;
    let paths_png = paths_png(
        &args.out,
        "sm_paths.png",
        "Score matching: sample paths (Euler–Maruyama), prior to data",
        &paths,
    )?;
    let curve_png = training_png(
        &args.out,
        "sm_training.png",
        "Score matching: training curve",
        "ELBO",
        &outcome.history.curve,
        ("train (one draw per point)", |e: &Evaluation| -e.train_loss),
        format!("validation ({} draws per point)", config.train_val_draws),
    )?;
    Ok(json!({
        "val_elbo": ev.elbo,
        "val_elbo_se": ev.se,
        "eval_draws": ev.draws,
        "terms": {
            "reconstruction": ev.reconstruction,
            "prior_kl": ev.prior_kl,
            "diffusion": ev.diffusion,
        },
        "val_log_likelihood": ll,
        "val_log_likelihood_se": se,
        "epochs": config.train.epochs,
        "train_seconds": outcome.history.seconds,
        "eval_seconds": outcome.eval_seconds,
        "figure_seconds": t0.elapsed().as_secs_f64(),
        "samples": {
            "n": outcome.samples.len(),
            "ks": outcome.ks,
            "w1": evaluate::wasserstein1(&outcome.samples, &data_run.validation),
        },
        "curve": outcome.history.curve,
        "figures": [file_name(&density_png), file_name(&paths_png), file_name(&curve_png)],
    }))
}

/// The checkpoint file of `model` in the output folder (a separate one for quick runs).
fn checkpoint(args: &Args, model: &str) -> PathBuf {
    let suffix = if args.quick { "-quick" } else { "" };
    args.out.join(format!("{model}{suffix}.safetensors"))
}

/// Shows epoch `e` on `bar`: `label` with `sign × loss` (−1 for an ELBO or likelihood, +1 for a
/// loss) and the headline validation figure when there is one.
fn show_epoch(bar: &ProgressBar, e: &Evaluation, label: &str, sign: f64) {
    bar.set_position(e.epoch as u64);
    let train = sign * e.train_loss;
    match e.validation_value() {
        Some(v) => bar.set_message(format!("{label} {train:.4}  val {v:.4}")),
        None => bar.set_message(format!("{label} {train:.4}")),
    }
}

/// The `y` values of the density figures: 561 points on [−14, 14].
fn y_grid() -> Vec<f64> {
    (0..=560).map(|i| -14.0 + 28.0 * i as f64 / 560.0).collect()
}

/// The kernel density estimate of `samples` on [`y_grid`].
fn kde_curve(samples: &[f64]) -> Vec<(f64, f64)> {
    let xs = y_grid();
    let density = evaluate::kde(samples, &xs, KDE_BANDWIDTH);
    xs.into_iter().zip(density).collect()
}

/// The entries of `t` as `f64`.
fn host(t: &Tensor) -> Result<Vec<f64>> {
    Ok(evaluate::to_host(t)?)
}

/// Draws `out/name`: the training data's histogram, the true density and a model's density.
fn density_png(
    out: &Path,
    name: &str,
    title: &str,
    mixture: &LaplaceMixture,
    train: &[f64],
    label: String,
    model: Vec<(f64, f64)>,
) -> Result<PathBuf> {
    let path = out.join(name);
    let xs = y_grid();
    plot::density_figure(
        &path,
        &Figure::new(title, "y", "density").with_x_range(-14.0, 14.0),
        train,
        80,
        &[
            Curve::new(
                "true density",
                xs.iter().map(|&x| (x, mixture.density(x))).collect(),
                (40, 40, 40),
            ),
            Curve::new(label, model, (200, 40, 40)),
        ],
    )?;
    Ok(path)
}

/// Draws `out/name`: sample paths from recorded states, one `(n, 1)` tensor per point of a
/// uniform grid on [0, 1].
fn paths_png(out: &Path, name: &str, title: &str, states: &[Tensor]) -> Result<PathBuf> {
    let columns: Vec<Vec<f64>> = states.iter().map(host).collect::<Result<_>>()?;
    let n_steps = columns.len().saturating_sub(1).max(1) as f64;
    let n_paths = columns.first().map_or(0, Vec::len);
    let lines: Vec<Vec<(f64, f64)>> = (0..n_paths)
        .map(|i| {
            columns
                .iter()
                .enumerate()
                .map(|(k, c)| (k as f64 / n_steps, c[i]))
                .collect()
        })
        .collect();
    let path = out.join(name);
    plot::paths_figure(
        &path,
        &Figure::new(title, "t", "x")
            .with_x_range(0.0, 1.0)
            .with_y_range(-14.0, 14.0),
        &lines,
        (30, 90, 180),
    )?;
    Ok(path)
}

/// Draws `out/name`: a training figure per epoch (`train.1` of each [`Evaluation`], labelled
/// `train.0`) and the headline validation figure.
fn training_png(
    out: &Path,
    name: &str,
    title: &str,
    y_label: &str,
    curve: &[Evaluation],
    train: (&str, fn(&Evaluation) -> f64),
    validation: String,
) -> Result<PathBuf> {
    let path = out.join(name);
    plot::line_figure(
        &path,
        &Figure::new(title, "epoch", y_label),
        &[
            Curve::new(
                train.0,
                curve
                    .iter()
                    .map(|e| (e.epoch as f64, (train.1)(e)))
                    .collect(),
                (30, 90, 180),
            ),
            Curve::new(
                validation,
                curve
                    .iter()
                    .filter_map(|e| e.validation_value().map(|v| (e.epoch as f64, v)))
                    .collect(),
                (200, 40, 40),
            ),
        ],
    )?;
    Ok(path)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn progress(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] epoch {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// Peak resident memory of this process (Linux `VmHWM`), if available.
fn peak_memory_bytes() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
