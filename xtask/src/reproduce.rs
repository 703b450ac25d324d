//! `cargo xtask reproduce`: the paper's experiments end to end (docs/REFERENCE.md), with a
//! progress bar per model, a printed table, and under `target/reproduce/` (or `--out`):
//! `report.json` (a typed [`Report`]), `report.md`, CSV training curves and figures as PNG and
//! SVG. The crates compute; this module only configures, times and renders.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use sde_experiments::train::TrainConfig;
use sde_experiments::{
    evaluate, exact, fm, ode, sde, sm, vdm, Dataset, Distribution, Evaluation, TrainRng,
};
use sde_solvers::OdeMethod;
use sde_variational::elbo::GenerativeSde;
use sde_variational::score_matching::ScoreFlow;
use sde_variational::{FlowMarginal, GaussianProcess, Time, VariationalProcess};

use crate::plot::{self, Curve, Figure};
use crate::report::{
    self, DataReport, Headline, ModelReport, Report, SampleQuality, Schedule, SeedSpread, Terms,
};

/// Options of `cargo xtask reproduce`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output folder for the report, curves and figures; a relative path is taken from the
    /// workspace root (as `cargo xtask bench` does), whatever the current directory.
    #[arg(long, default_value = "target/reproduce")]
    out: PathBuf,
    /// A shortened run (seconds, not minutes) that exercises everything.
    #[arg(long)]
    quick: bool,
    /// Training seed: offsets every model's initialisation and batch/noise seeds (0 is the
    /// documented default run).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Repeat every model with seeds SEED, SEED+1, …, and report the headline's mean ± sd
    /// (figures and details come from the first seed).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100))]
    seeds: u64,
    /// Multiply every model's epochs (and validation interval) by this factor (> 0).
    #[arg(long, default_value_t = 1.0)]
    epochs_scale: f64,
    /// The data set: the paper's Laplace mixture, one Laplace(0, 1), or N(−1, 2²).
    #[arg(long, value_enum, default_value_t = DataName::LaplaceMixture)]
    data: DataName,
    /// Seed of the data set's draw.
    #[arg(long, default_value_t = 0)]
    data_seed: u64,
    /// Training points.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    n_train: u64,
    /// Validation points (a `--quick` run evaluates on at most 2,000 of them).
    #[arg(long, default_value_t = 8000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    n_val: u64,
    /// Validation points of the exact evaluation (the bound chain from the SDE models'
    /// Fokker–Planck marginals, the Liouville check of the flows); 0 skips it.
    #[arg(long, default_value_t = 1000)]
    exact_points: u64,
    /// Continue an interrupted run from the checkpoints in the output folder.
    #[arg(long)]
    resume: bool,
    /// Run only these models (comma-separated): ode, sde, vdm, fm (the paper's four, the
    /// default), sm (score matching), fm-elbo (flow matching with learned β₀, β₁ on the
    /// σ-weighted ELBO) and sde-flow (the SDE model with a sinh–arcsinh variational flow),
    /// the last three not in the paper.
    #[arg(long, value_delimiter = ',', default_value = "ode,sde,vdm,fm")]
    only: Vec<Model>,
}

/// The data sets of `--data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DataName {
    /// Five Laplace components at −8, −4, 0, 4, 8 (the paper's benchmark).
    LaplaceMixture,
    /// One Laplace(0, 1).
    Laplace,
    /// N(−1, 2²).
    Gaussian,
}

impl DataName {
    fn as_str(self) -> &'static str {
        match self {
            Self::LaplaceMixture => "laplace-mixture",
            Self::Laplace => "laplace",
            Self::Gaussian => "gaussian",
        }
    }
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
    /// The SDE experiment with a sinh–arcsinh variational flow (paper §6, not an experiment of
    /// the paper).
    SdeFlow,
}

impl Model {
    /// The model's key in the report and its file-name prefix.
    fn key(self) -> &'static str {
        match self {
            Self::Ode => "ode",
            Self::Sde => "sde",
            Self::Vdm => "vdm",
            Self::Fm => "fm",
            Self::Sm => "sm",
            Self::FmElbo => "fm_elbo",
            Self::SdeFlow => "sde_flow",
        }
    }
}

/// What one run of one model hands back: its report and its training curve.
struct Run {
    report: ModelReport,
    curve: Vec<Evaluation>,
}

/// Everything a model's run needs to know about this invocation.
struct Ctx<'a> {
    args: &'a Args,
    out: &'a Path,
    dist: &'a Distribution,
    /// The data the models train and are evaluated on.
    data: &'a Dataset,
    device: Device,
    seed: u64,
    /// Draw the figures (the first seed only).
    figures: bool,
}

impl Ctx<'_> {
    /// Applies the invocation to a model's training settings: checkpoint path, resume,
    /// `--quick` epochs, `--epochs-scale` and `--seed`.
    fn configure(
        &self,
        name: &str,
        train: &mut TrainConfig,
        init_seed: &mut u64,
        quick: (usize, usize),
    ) {
        let quick_tag = if self.args.quick { "-quick" } else { "" };
        let seed_tag = if self.seed == 0 {
            String::new()
        } else {
            format!("-seed{}", self.seed)
        };
        train.checkpoint = Some(
            self.out
                .join(format!("{name}{quick_tag}{seed_tag}.safetensors")),
        );
        train.resume = self.args.resume;
        if self.args.quick {
            (train.epochs, train.validate_every) = quick;
            train.checkpoint_every = None;
        }
        let scale = |n: usize| ((n as f64 * self.args.epochs_scale).round() as usize).max(1);
        train.epochs = scale(train.epochs);
        train.validate_every = scale(train.validate_every).min(train.epochs);
        train.checkpoint_every = train.checkpoint_every.map(|n| scale(n).min(train.epochs));
        train.seed = train.seed.wrapping_add(self.seed);
        *init_seed = init_seed.wrapping_add(self.seed);
    }

    /// The validation sample's true log-likelihood.
    fn val_true(&self) -> f64 {
        self.dist.mean_log_likelihood(&self.data.validation)
    }

    fn samples(&self, samples: &[f64], ks: f64) -> SampleQuality {
        SampleQuality {
            n: samples.len(),
            ks,
            w1: evaluate::wasserstein1(samples, &self.data.validation),
        }
    }
}

/// Population expected log-likelihood of the paper's mixture (docs/MATH.md §9).
const POPULATION_LL: f64 = -2.98755;

pub fn run(args: Args) -> Result<()> {
    if !(args.epochs_scale.is_finite() && args.epochs_scale > 0.0 && args.epochs_scale <= 1e4) {
        bail!(
            "--epochs-scale must be positive and at most 1e4, got {}",
            args.epochs_scale
        );
    }
    let out = crate::resolve_out(&args.out);
    // Fail now, not after training, if the folder cannot be written.
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let probe = out.join(".write-test");
    fs::write(&probe, b"").with_context(|| format!("cannot write into {}", out.display()))?;
    fs::remove_file(&probe).ok();

    let device = Device::Cpu;
    let dist = Distribution::by_name(args.data.as_str())?;
    let full = Dataset::draw(
        &dist,
        args.n_train as usize,
        args.n_val as usize,
        args.data_seed,
    )?;
    let population = dist.expected_log_likelihood();
    let data = if args.quick && full.validation.len() > 2000 {
        // A quarter of the validation set keeps the quick run's evaluations short.
        Dataset {
            train: full.train.clone(),
            validation: full.validation[..2000].to_vec(),
        }
    } else {
        full.clone()
    };
    let val_true = dist.mean_log_likelihood(&data.validation);
    println!(
        "data {}: {} train / {} validation points; true log-likelihood of the validation sample {val_true:.4} (population {population:.5}{})",
        args.data.as_str(),
        data.train.len(),
        data.validation.len(),
        if args.data == DataName::LaplaceMixture {
            format!(", docs/MATH.md {POPULATION_LL}")
        } else {
            String::new()
        }
    );

    let mut models: BTreeMap<String, ModelReport> = BTreeMap::new();
    let seeds: Vec<u64> = (0..args.seeds).map(|k| args.seed + k).collect();
    let t_all = Instant::now();
    let mut order: Vec<Model> = Vec::new();
    for m in [
        Model::Ode,
        Model::Sde,
        Model::Vdm,
        Model::Fm,
        Model::Sm,
        Model::FmElbo,
        Model::SdeFlow,
    ] {
        if args.only.contains(&m) {
            order.push(m);
        }
    }
    for model in order {
        let mut runs: Vec<Run> = Vec::new();
        for (k, &seed) in seeds.iter().enumerate() {
            if seeds.len() > 1 {
                println!("seed {seed} ({}/{}):", k + 1, seeds.len());
            }
            let ctx = Ctx {
                args: &args,
                out: &out,
                dist: &dist,
                data: &data,
                device: device.clone(),
                seed,
                figures: k == 0,
            };
            let run = match model {
                Model::Ode => run_ode(&ctx),
                Model::Sde => run_sde(&ctx, sde::Family::Gaussian),
                Model::Vdm => run_vdm(&ctx),
                Model::Fm => run_fm(&ctx, false),
                Model::Sm => run_sm(&ctx),
                Model::FmElbo => run_fm(&ctx, true),
                Model::SdeFlow => run_sde(&ctx, sde::Family::SinhArcsinh),
            };
            // Name the model in every error (a non-finite loss names epoch, batch and term);
            // its last checkpoint stays, and `--resume` continues from it.
            runs.push(run.with_context(|| {
                format!(
                    "model {} (seed {seed}); its last checkpoint is kept in {}, continue with --resume",
                    model.key(),
                    out.display()
                )
            })?);
        }
        let spread = (runs.len() > 1).then(|| {
            SeedSpread::new(
                runs.iter().map(|r| r.report.headline_value().0).collect(),
                runs.iter().map(|r| r.report.train_seconds).collect(),
            )
        });
        let exact_spread =
            report::ExactSpread::of(&runs.iter().map(|r| &r.report).collect::<Vec<_>>());
        let first = runs.swap_remove(0);
        let mut rep = first.report;
        let csv = format!("{}_curve.csv", model.key());
        report::write_curve_csv(&out.join(&csv), &first.curve)?;
        rep.curve_csv = csv;
        rep.seeds = spread;
        rep.exact_seeds = exact_spread;
        rep.reference = report::reference(model.key());
        models.insert(model.key().into(), rep);
    }
    let report = Report {
        schema: report::SCHEMA,
        quick: args.quick,
        seeds,
        epochs_scale: args.epochs_scale,
        data: DataReport {
            name: args.data.as_str().into(),
            seed: args.data_seed,
            n_train: data.train.len(),
            n_validation: data.validation.len(),
            population_log_likelihood: population,
            train_true_log_likelihood: dist.mean_log_likelihood(&data.train),
            val_true_log_likelihood: val_true,
        },
        models,
        total_seconds: t_all.elapsed().as_secs_f64(),
        peak_memory_bytes: peak_memory_bytes(),
        reference_total_seconds: report::REFERENCE_TOTAL_SECONDS,
    };
    let json_path = out.join("report.json");
    fs::write(&json_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let md = report.to_markdown();
    fs::write(out.join("report.md"), &md)
        .with_context(|| format!("writing {}", out.join("report.md").display()))?;
    println!();
    for line in md.lines().skip_while(|l| !l.starts_with('|')) {
        if !line.starts_with('|') {
            break;
        }
        println!("{line}");
    }
    println!(
        "\nwrote {} and {}, curves and figures; total {:.1} s; peak memory {:.0} MiB",
        json_path.display(),
        out.join("report.md").display(),
        report.total_seconds,
        report.peak_memory_bytes.unwrap_or(0) as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}

/// Runs a training `run` with a progress bar of `epochs` showing `label` (`sign × loss`: −1
/// for an ELBO or likelihood, +1 for a loss) and the headline validation figure.
fn with_progress<T>(
    epochs: usize,
    label: &str,
    sign: f64,
    run: impl FnOnce(&mut dyn FnMut(&Evaluation)) -> sde_experiments::Result<T>,
) -> Result<T> {
    let bar = progress(epochs as u64);
    let out = run(&mut |e: &Evaluation| show_epoch(&bar, e, label, sign))?;
    bar.finish();
    Ok(out)
}

/// The report of a model judged by its ELBO `ev`, with the fields every model fills.
fn elbo_report(
    title: &str,
    ev: &sde::ElboEstimate,
    history: &sde_experiments::TrainHistory,
    epochs: usize,
    samples: SampleQuality,
    eval_seconds: f64,
) -> ModelReport {
    let mut rep = base_report(title, Headline::Elbo, history, epochs, samples);
    rep.val_elbo = Some(ev.elbo);
    rep.val_elbo_se = Some(ev.se);
    rep.terms = Some(Terms {
        reconstruction: ev.reconstruction,
        prior_kl: ev.prior_kl,
        diffusion: ev.diffusion,
    });
    rep.eval_draws = Some(ev.draws);
    rep.eval_seconds = eval_seconds;
    rep
}

/// A model report with the fields every model fills; the runners add the rest.
fn base_report(
    title: &str,
    headline: Headline,
    history: &sde_experiments::TrainHistory,
    epochs: usize,
    samples: SampleQuality,
) -> ModelReport {
    ModelReport {
        title: title.into(),
        headline,
        val_log_likelihood: None,
        val_log_likelihood_se: None,
        val_elbo: None,
        val_elbo_se: None,
        terms: None,
        eval_draws: None,
        schedule: None,
        epochs,
        train_seconds: history.seconds,
        validation_seconds: history.validation_seconds,
        eval_seconds: 0.0,
        figure_seconds: 0.0,
        samples,
        extra: BTreeMap::new(),
        reference: None,
        seeds: None,
        exact: None,
        exact_seeds: None,
        flow_check: None,
        figures: Vec::new(),
        curve_csv: String::new(),
    }
}

/// The ODE experiment (docs/REFERENCE.md §1): trains, evaluates, samples, draws its figures.
fn run_ode(ctx: &Ctx) -> Result<Run> {
    let mut config = ode::OdeConfig::reference();
    ctx.configure("ode", &mut config.train, &mut config.init_seed, (20, 5));
    println!(
        "ODE (CNF, exact likelihood): {} epochs, {} RK2 steps, lr {}",
        config.train.epochs, config.n_steps, config.train.adam.lr
    );
    let outcome = with_progress(config.train.epochs, "loss", 1.0, |on_epoch| {
        ode::run(&config, ctx.data, &ctx.device, on_epoch)
    })?;
    let (ll_rk4, se_rk4) = outcome.val_ll_eval_method;
    let (ll_rk2, se_rk2) = outcome.val_ll_train_method;
    let t0 = Instant::now();
    let model = outcome.model.detached()?;
    let n_samples = if ctx.args.quick { 2000 } else { 8000 };
    let mut rng = TrainRng::seed_from_u64(config.train.seed ^ 0x0de_5a3b);
    let samples = evaluate::last_to_host(&model.sample(
        n_samples,
        OdeMethod::Rk4,
        config.n_steps,
        &mut rng,
        false,
    )?)?;
    let ks = evaluate::ks_distance(&samples, &ctx.data.validation);
    let eval_seconds = t0.elapsed().as_secs_f64();
    println!(
        "ODE: validation log-likelihood RK4 {ll_rk4:.4} ± {se_rk4:.4}, RK2 {ll_rk2:.4} ± {se_rk2:.4} (sample's true value {:.4}); KS {ks:.4}; training {:.1} s ({:.1} s validating)",
        ctx.val_true(),
        outcome.history.seconds,
        outcome.history.validation_seconds
    );
    let mut rep = base_report(
        "ODE (continuous normalizing flow)",
        Headline::LogLikelihood,
        &outcome.history,
        config.train.epochs,
        ctx.samples(&samples, ks),
    );
    rep.val_log_likelihood = Some(ll_rk4);
    rep.val_log_likelihood_se = Some(se_rk4);
    rep.extra.insert("val_log_likelihood_rk2".into(), ll_rk2);
    rep.extra.insert("val_log_likelihood_rk2_se".into(), se_rk2);
    rep.eval_seconds = eval_seconds;
    if ctx.figures {
        let t0 = Instant::now();
        let xs = y_grid();
        let grid = Tensor::from_slice(&xs, (xs.len(), 1), &ctx.device)?.to_dtype(config.dtype)?;
        let model_ll = host(&model.log_likelihood(&grid, OdeMethod::Rk4, config.n_steps)?)?;
        let mut rng = TrainRng::seed_from_u64(7);
        let paths = model.sample(100, OdeMethod::Rk4, config.n_steps, &mut rng, true)?;
        rep.figures = vec![
            density_png(
                ctx,
                "ode_density.png",
                "ODE (CNF): learned density",
                "CNF (RK4)".into(),
                xs.iter()
                    .zip(&model_ll)
                    .map(|(&x, &l)| (x, l.exp()))
                    .collect(),
            )?,
            paths_png(
                ctx.out,
                "ode_paths.png",
                "ODE (CNF): sample paths, prior (t = 0) to data (t = 1)",
                &paths,
            )?,
            training_png(
                ctx.out,
                "ode_training.png",
                "ODE (CNF): training curve",
                "log-likelihood",
                &outcome.history.curve,
                ("train (minus loss)", |e: &Evaluation| -e.train_loss),
                "validation (RK2)".into(),
            )?,
        ];
        rep.figure_seconds = t0.elapsed().as_secs_f64();
    }
    add_flow_check(ctx, &mut rep, "ODE", &model, config.dtype)?;
    Ok(Run {
        report: rep,
        curve: outcome.history.curve,
    })
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

/// Figure 2 of the paper for a Gaussian variational process: `α(y, t)`, `β(y, t)` and the
/// generative diffusion `σ(α(y, t), t)` along the mean, over t for [`SHOWN_Y`]; `sigma`
/// maps a column of `x` and a time to `σ`.
fn process_figures(
    ctx: &Ctx,
    prefix: &str,
    label: &str,
    process: &impl GaussianProcess,
    dtype: candle_core::DType,
    sigma: impl Fn(&Tensor, f64) -> Result<Tensor>,
) -> Result<Vec<String>> {
    let ys = Tensor::from_slice(&SHOWN_Y, (SHOWN_Y.len(), 1), &ctx.device)?.to_dtype(dtype)?;
    let mut alpha = vec![Vec::new(); SHOWN_Y.len()];
    let mut beta = vec![Vec::new(); SHOWN_Y.len()];
    let mut sig = vec![Vec::new(); SHOWN_Y.len()];
    for i in 0..=100 {
        let t = i as f64 / 100.0;
        let q = process.marginal(&ys, Time::Scalar(t), false)?;
        let s = sigma(&q.alpha, t)?;
        for (k, ((a, b), sg)) in host(&q.alpha)?
            .into_iter()
            .zip(host(&q.beta)?)
            .zip(host(&s)?)
            .enumerate()
        {
            alpha[k].push((t, a));
            beta[k].push((t, b));
            sig[k].push((t, sg));
        }
    }
    let mut figures = Vec::new();
    for (what, axis, title, values) in [
        (
            "alpha",
            "α",
            format!("{label}: variational mean α(y, t)"),
            &alpha,
        ),
        (
            "beta",
            "β",
            format!("{label}: variational std β(y, t)"),
            &beta,
        ),
        (
            "sigma",
            "σ",
            format!("{label}: diffusion σ(α(y, t), t) along the mean"),
            &sig,
        ),
    ] {
        let curves: Vec<Curve> = values
            .iter()
            .zip(SHOWN_Y)
            .zip(Y_COLORS)
            .map(|((pts, y), c)| Curve::new(format!("y = {y}"), pts.clone(), c))
            .collect();
        let path = ctx.out.join(format!("{prefix}_{what}.png"));
        plot::line_figure(&path, &Figure::new(title, "t", axis), &curves)?;
        figures.push(file_name(&path));
    }
    Ok(figures)
}

/// The learned posterior over the latent, `q_0(x | y)` for [`SHOWN_Y`], on `[−4, 4]`: where the
/// variational process starts each datum (a Gaussian for the paper's model; skewed or
/// heavy-tailed where the flow variant learned so).
fn posterior_figure(
    ctx: &Ctx,
    prefix: &str,
    label: &str,
    process: &impl VariationalProcess,
    dtype: candle_core::DType,
) -> Result<String> {
    let xs: Vec<f64> = (0..=400).map(|i| -4.0 + 8.0 * i as f64 / 400.0).collect();
    let x = Tensor::from_slice(&xs, (xs.len(), 1), &ctx.device)?.to_dtype(dtype)?;
    let mut curves = Vec::new();
    for (&y, c) in SHOWN_Y.iter().zip(Y_COLORS) {
        let ys = Tensor::full(y, (xs.len(), 1), &ctx.device)?.to_dtype(dtype)?;
        let q = process.marginal(&ys, Time::Scalar(0.0), false)?;
        let density = host(&q.log_density(&x)?.exp()?)?;
        curves.push(Curve::new(
            format!("y = {y}"),
            xs.iter().copied().zip(density).collect(),
            c,
        ));
    }
    let path = ctx.out.join(format!("{prefix}_posterior.png"));
    plot::line_figure(
        &path,
        &Figure::new(
            format!("{label}: variational posterior q_0(x | y) at t = 0"),
            "x",
            "density",
        ),
        &curves,
    )?;
    Ok(file_name(&path))
}

/// Where in time an SDE model's ELBO loses its nats: the drift-matching integrand `F(t)`
/// averaged over (at most 2,000) validation points, at 40 mid-interval times.
fn elbo_over_t_figure(
    ctx: &Ctx,
    prefix: &str,
    label: &str,
    process: &impl VariationalProcess,
    model: &impl GenerativeSde,
    dtype: candle_core::DType,
) -> Result<String> {
    let n = ctx.data.validation.len().min(2000);
    let val =
        Tensor::from_slice(&ctx.data.validation[..n], (n, 1), &ctx.device)?.to_dtype(dtype)?;
    let ts: Vec<f64> = (0..40).map(|i| (i as f64 + 0.5) / 40.0).collect();
    let mut rng = TrainRng::seed_from_u64(11);
    let profile = evaluate::diffusion_profile(process, model, &val, &ts, 2, &mut rng)?;
    let path = ctx.out.join(format!("{prefix}_elbo_over_t.png"));
    plot::line_figure(
        &path,
        &Figure::new(
            format!("{label}: ELBO drift-matching integrand F(t)"),
            "t",
            "nats per unit time",
        ),
        &[Curve::new(
            "F(t) = E[(f − f_q)² / 2σ²] (its integral is the diffusion term)",
            profile,
            (200, 40, 40),
        )],
    )?;
    Ok(file_name(&path))
}

/// The SDE experiment (docs/REFERENCE.md §2): trains, evaluates the validation ELBO with many
/// draws, samples, draws its figures; with `family` sinh–arcsinh, its flow variant.
fn run_sde(ctx: &Ctx, family: sde::Family) -> Result<Run> {
    let (mut config, key, label, title, what) = match family {
        sde::Family::Gaussian => (
            sde::SdeConfig::reference(),
            "sde",
            "SDE",
            "SDE (learned Gaussian variational process)",
            "Gaussian variational process",
        ),
        sde::Family::SinhArcsinh => (
            sde::SdeConfig::sinh_arcsinh(),
            "sde_flow",
            "SDE-flow",
            "SDE-flow (learned sinh–arcsinh variational flow)",
            "sinh–arcsinh variational flow on the Gaussian process",
        ),
    };
    ctx.configure(key, &mut config.train, &mut config.init_seed, (100, 50));
    if ctx.args.quick {
        config.eval_draws = 4;
        config.n_samples = 2000;
    }
    println!(
        "{label} (learned drift, diffusion and {what}; SDE ELBO): {} epochs, lr {}, {:?}",
        config.train.epochs, config.train.adam.lr, config.train.adam.weight_decay
    );
    let outcome = with_progress(config.train.epochs, "ELBO", -1.0, |on_epoch| {
        sde::run(&config, ctx.data, &ctx.device, on_epoch)
    })?;
    let ev = outcome.eval;
    println!(
        "{label}: validation ELBO {:.4} ± {:.4} ({} draws per point; reconstruction {:.3}, KL {:.3}, diffusion {:.3}); sample's true log-likelihood {:.4}; KS {:.4}; training {:.1} s ({:.1} s validating), evaluation and sampling {:.1} s",
        ev.elbo, ev.se, ev.draws, ev.reconstruction, ev.prior_kl, ev.diffusion, ctx.val_true(), outcome.ks,
        outcome.history.seconds, outcome.history.validation_seconds, outcome.eval_seconds
    );
    let process = outcome.model.process.detached()?;
    let variational = outcome.model.variational_detached()?;
    let sde_model = outcome.model.sde.detached()?;
    let mut rep = elbo_report(
        title,
        &ev,
        &outcome.history,
        config.train.epochs,
        ctx.samples(&outcome.samples, outcome.ks),
        outcome.eval_seconds,
    );
    if let Some(b) = host(&process.beta1()?)?.first() {
        rep.extra.insert("beta1".into(), *b);
    }
    if ctx.figures {
        let t0 = Instant::now();
        let mut rng = TrainRng::seed_from_u64(7);
        let paths = sde::sample(&outcome.model.sde, 100, config.n_steps, &mut rng, true)?;
        rep.figures = vec![
            density_png(
                ctx,
                &format!("{key}_density.png"),
                &format!("{label}: density of generated samples"),
                format!(
                    "{} {label} samples (KDE, h = {KDE_BANDWIDTH})",
                    outcome.samples.len()
                ),
                kde_curve(&outcome.samples),
            )?,
            paths_png(
                ctx.out,
                &format!("{key}_paths.png"),
                &format!("{label}: sample paths (Euler–Maruyama), prior to data"),
                &paths,
            )?,
        ];
        rep.figures.extend(process_figures(
            ctx,
            key,
            label,
            &process,
            config.dtype,
            |x, t| Ok(sde_model.fields(x, Time::Scalar(t))?.1),
        )?);
        rep.figures.push(elbo_over_t_figure(
            ctx,
            key,
            label,
            &variational,
            &sde_model,
            config.dtype,
        )?);
        rep.figures.push(posterior_figure(
            ctx,
            key,
            label,
            &variational,
            config.dtype,
        )?);
        rep.figures.push(training_png(
            ctx.out,
            &format!("{key}_training.png"),
            &format!("{label}: training curve"),
            "ELBO",
            &outcome.history.curve,
            ("train (one draw per point)", |e: &Evaluation| -e.train_loss),
            format!("validation ({} draws per point)", config.train_val_draws),
        )?);
        rep.figure_seconds = t0.elapsed().as_secs_f64();
    }
    let delta = process.beta1()?;
    add_exact(ctx, &mut rep, key, label, |c| {
        exact::sde_chain(
            &variational,
            &sde_model,
            &delta,
            &ctx.data.validation,
            c,
            (config.dtype, &ctx.device),
        )
    })?;
    Ok(Run {
        report: rep,
        curve: outcome.history.curve,
    })
}

/// The VDM experiment (docs/REFERENCE.md §3): trains, evaluates the validation ELBO with many
/// draws, samples, draws its figures.
fn run_vdm(ctx: &Ctx) -> Result<Run> {
    let mut config = vdm::VdmConfig::reference();
    ctx.configure("vdm", &mut config.train, &mut config.init_seed, (300, 100));
    if ctx.args.quick {
        config.eval_draws = 4;
        config.n_samples = 2000;
    }
    println!(
        "VDM (learned log-SNR schedule, signal prediction ŷ = x + M(x, t)): {} epochs, lr {}, clipping {:?}",
        config.train.epochs, config.train.adam.lr, config.train.adam.max_grad_norm
    );
    let outcome = with_progress(config.train.epochs, "ELBO", -1.0, |on_epoch| {
        vdm::run(&config, ctx.data, &ctx.device, on_epoch)
    })?;
    let ev = outcome.eval;
    let (l0, l1) = outcome.model.endpoints()?;
    println!(
        "VDM: validation ELBO {:.4} ± {:.4} ({} draws per point; reconstruction {:.3}, KL {:.3}, diffusion {:.3}); schedule (λ0, λ1) = ({l0:.3}, {l1:.3}); KS {:.4}; training {:.1} s ({:.1} s validating)",
        ev.elbo, ev.se, ev.draws, ev.reconstruction, ev.prior_kl, ev.diffusion, outcome.ks,
        outcome.history.seconds, outcome.history.validation_seconds
    );
    let mut rep = elbo_report(
        "VDM (variational diffusion model)",
        &ev,
        &outcome.history,
        config.train.epochs,
        ctx.samples(&outcome.samples, outcome.ks),
        outcome.eval_seconds,
    );
    rep.schedule = Some(Schedule {
        lambda_0: l0,
        lambda_1: l1,
    });
    if ctx.figures {
        let t0 = Instant::now();
        let sde_model = outcome.model.sde.detached()?;
        let schedule = sde_model.schedule().clone();
        let mut rng = TrainRng::seed_from_u64(7);
        let paths = vdm::sample(&outcome.model.sde, 100, config.n_steps, &mut rng, true)?;
        rep.figures = vec![
            density_png(
                ctx,
                "vdm_density.png",
                "VDM: density of generated samples",
                format!(
                    "{} VDM samples (KDE, h = {KDE_BANDWIDTH})",
                    outcome.samples.len()
                ),
                kde_curve(&outcome.samples),
            )?,
            paths_png(
                ctx.out,
                "vdm_paths.png",
                "VDM: sample paths (Euler–Maruyama), prior to data",
                &paths,
            )?,
        ];
        rep.figures.extend(process_figures(
            ctx,
            "vdm",
            "VDM",
            &schedule,
            config.dtype,
            |x, t| {
                let tt = Tensor::full(t, x.dims(), x.device())?.to_dtype(x.dtype())?;
                Ok(schedule.diffusion(&tt)?.sigma2.sqrt()?)
            },
        )?);
        rep.figures.push(elbo_over_t_figure(
            ctx,
            "vdm",
            "VDM",
            &schedule,
            &sde_model,
            config.dtype,
        )?);
        let line = |a: f64, b: f64| -> Vec<(f64, f64)> {
            (0..=100)
                .map(|i| {
                    let t = i as f64 / 100.0;
                    (t, (1.0 - t) * a + t * b)
                })
                .collect()
        };
        let schedule_png = ctx.out.join("vdm_schedule.png");
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
        rep.figures.push(file_name(&schedule_png));
        rep.figures.push(training_png(
            ctx.out,
            "vdm_training.png",
            "VDM: training curve",
            "ELBO",
            &outcome.history.curve,
            ("train (one draw per point)", |e: &Evaluation| -e.train_loss),
            format!("validation ({} draws per point)", config.train_val_draws),
        )?);
        rep.figure_seconds = t0.elapsed().as_secs_f64();
    }
    let vdm_model = outcome.model.sde.detached()?;
    add_exact(ctx, &mut rep, "vdm", "VDM", |c| {
        exact::vp_chain(
            &vdm_model,
            &ctx.data.validation,
            c,
            (config.dtype, &ctx.device),
        )
    })?;
    Ok(Run {
        report: rep,
        curve: outcome.history.curve,
    })
}

/// The flow-matching experiment (docs/REFERENCE.md §4), or with `learned` its variant with
/// learned β₀, β₁ on the σ-weighted ELBO: trains, evaluates the exact likelihood through the
/// probability-flow ODE, samples, draws its figures.
fn run_fm(ctx: &Ctx, learned: bool) -> Result<Run> {
    let (mut config, name, label) = if learned {
        (fm::FmConfig::learned(), "fm_elbo", "FM-ELBO")
    } else {
        (fm::FmConfig::reference(), "fm", "FM")
    };
    ctx.configure(name, &mut config.train, &mut config.init_seed, (300, 100));
    if ctx.args.quick {
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
    let outcome = with_progress(config.train.epochs, "loss", 1.0, |on_epoch| {
        fm::run(&config, ctx.data, &ctx.device, on_epoch)
    })?;
    let (ll, se) = outcome.val_log_likelihood;
    let (b0, b1) = outcome.betas;
    println!(
        "{label}: exact validation log-likelihood (RK4) {ll:.4} ± {se:.4}; loss {:.4}; ELBO (δ = {}) {:.3} ± {:.3}; β = ({b0:.4}, {b1:.4}); KS {:.4} (ODE samples), {:.4} (SDE samples); training {:.1} s ({:.1} s validating), evaluation and sampling {:.1} s",
        outcome.val.loss.0, config.delta, outcome.val.elbo.0, outcome.val.elbo.1, outcome.ks, outcome.sde_ks,
        outcome.history.seconds, outcome.history.validation_seconds, outcome.eval_seconds
    );
    let title = if learned {
        "Flow matching, learned β₀, β₁ (σ-weighted ELBO)"
    } else {
        "Flow matching"
    };
    let mut rep = base_report(
        title,
        Headline::LogLikelihood,
        &outcome.history,
        config.train.epochs,
        ctx.samples(&outcome.samples, outcome.ks),
    );
    rep.val_log_likelihood = Some(ll);
    rep.val_log_likelihood_se = Some(se);
    rep.val_elbo = Some(outcome.val.elbo.0);
    rep.val_elbo_se = Some(outcome.val.elbo.1);
    rep.eval_seconds = outcome.eval_seconds;
    for (k, v) in [
        ("val_loss", outcome.val.loss.0),
        ("val_loss_se", outcome.val.loss.1),
        ("delta", config.delta),
        ("beta0", b0),
        ("beta1", b1),
        ("sde_samples_ks", outcome.sde_ks),
        (
            "sde_samples_w1",
            evaluate::wasserstein1(&outcome.sde_samples, &ctx.data.validation),
        ),
    ] {
        rep.extra.insert(k.into(), v);
    }
    if ctx.figures {
        let t0 = Instant::now();
        let xs = y_grid();
        let grid = Tensor::from_slice(&xs, (xs.len(), 1), &ctx.device)?.to_dtype(config.dtype)?;
        let flow = outcome.model.flow()?.detached()?;
        let model_ll = host(&flow.log_likelihood(&grid, OdeMethod::Rk4, config.n_steps)?)?;
        let mut rng = TrainRng::seed_from_u64(7);
        let paths = flow.sample(100, OdeMethod::Rk4, config.n_steps, &mut rng, true)?;
        rep.figures = vec![
            density_png(
                ctx,
                &format!("{name}_density.png"),
                &format!("{label}: learned density (exact, RK4)"),
                "flow matching (RK4)".into(),
                xs.iter()
                    .zip(&model_ll)
                    .map(|(&x, &l)| (x, l.exp()))
                    .collect(),
            )?,
            paths_png(
                ctx.out,
                &format!("{name}_paths.png"),
                &format!("{label}: sample paths (RK4), prior to data"),
                &paths,
            )?,
            training_png(
                ctx.out,
                &format!("{name}_training.png"),
                &format!("{label}: training curve"),
                "loss",
                &outcome.history.curve,
                ("train", |e: &Evaluation| e.train_loss),
                format!("validation ({} draws per point)", config.val_draws),
            )?,
        ];
        rep.figure_seconds = t0.elapsed().as_secs_f64();
    }
    add_flow_check(
        ctx,
        &mut rep,
        label,
        &outcome.model.flow()?.detached()?,
        config.dtype,
    )?;
    Ok(Run {
        report: rep,
        curve: outcome.history.curve,
    })
}

/// The score-matching run (not in the paper; VDM's network and budget): trains, evaluates its
/// ELBO and its exact probability-flow likelihood, samples, draws its figures.
fn run_sm(ctx: &Ctx) -> Result<Run> {
    let mut config = sm::SmConfig::reference();
    ctx.configure("sm", &mut config.train, &mut config.init_seed, (300, 100));
    if ctx.args.quick {
        config.eval_draws = 4;
        config.n_samples = 2000;
    }
    println!(
        "SM (denoising score matching, VP log-SNR {:?} fixed): {} epochs, lr {}",
        config.lambda, config.train.epochs, config.train.adam.lr
    );
    let outcome = with_progress(config.train.epochs, "ELBO", -1.0, |on_epoch| {
        sm::run(&config, ctx.data, &ctx.device, on_epoch)
    })?;
    let ev = outcome.eval;
    let (ll, se) = outcome.val_log_likelihood;
    println!(
        "SM: validation ELBO {:.4} ± {:.4}; exact probability-flow log-likelihood (RK4) {ll:.4} ± {se:.4}; KS {:.4}; training {:.1} s, evaluation and sampling {:.1} s",
        ev.elbo, ev.se, outcome.ks, outcome.history.seconds, outcome.eval_seconds
    );
    let mut rep = elbo_report(
        "Score matching (denoising, VP process)",
        &ev,
        &outcome.history,
        config.train.epochs,
        ctx.samples(&outcome.samples, outcome.ks),
        outcome.eval_seconds,
    );
    rep.val_log_likelihood = Some(ll);
    rep.val_log_likelihood_se = Some(se);
    if ctx.figures {
        let t0 = Instant::now();
        let xs = y_grid();
        let grid = Tensor::from_slice(&xs, (xs.len(), 1), &ctx.device)?.to_dtype(config.dtype)?;
        let sde_model = outcome.model.sde.detached()?;
        let model_ll =
            host(&ScoreFlow(&sde_model).log_likelihood(&grid, OdeMethod::Rk4, config.n_steps)?)?;
        let mut rng = TrainRng::seed_from_u64(7);
        let paths = evaluate::sample_sde(
            &sde_model,
            100,
            config.n_steps,
            (config.dtype, &ctx.device),
            &mut rng,
            true,
        )?;
        rep.figures = vec![
            density_png(
                ctx,
                "sm_density.png",
                "Score matching: probability-flow density (exact, RK4)",
                "score model (RK4)".into(),
                xs.iter()
                    .zip(&model_ll)
                    .map(|(&x, &l)| (x, l.exp()))
                    .collect(),
            )?,
            paths_png(
                ctx.out,
                "sm_paths.png",
                "Score matching: sample paths (Euler–Maruyama), prior to data",
                &paths,
            )?,
            elbo_over_t_figure(
                ctx,
                "sm",
                "Score matching",
                sde_model.schedule(),
                &sde_model,
                config.dtype,
            )?,
            training_png(
                ctx.out,
                "sm_training.png",
                "Score matching: training curve",
                "ELBO",
                &outcome.history.curve,
                ("train (one draw per point)", |e: &Evaluation| -e.train_loss),
                format!("validation ({} draws per point)", config.train_val_draws),
            )?,
        ];
        rep.figure_seconds = t0.elapsed().as_secs_f64();
    }
    let sm_model = outcome.model.sde.detached()?;
    add_exact(ctx, &mut rep, "sm", "SM", |c| {
        exact::vp_chain(
            &sm_model,
            &ctx.data.validation,
            c,
            (config.dtype, &ctx.device),
        )
    })?;
    Ok(Run {
        report: rep,
        curve: outcome.history.curve,
    })
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

/// Draws `out/name` (PNG and SVG): the training data's histogram, the true density and a
/// model's density; returns the PNG's file name.
fn density_png(
    ctx: &Ctx,
    name: &str,
    title: &str,
    label: String,
    model: Vec<(f64, f64)>,
) -> Result<String> {
    let path = ctx.out.join(name);
    let xs = y_grid();
    plot::density_figure(
        &path,
        &Figure::new(title, "y", "density").with_x_range(-14.0, 14.0),
        &ctx.data.train,
        80,
        &[
            Curve::new(
                "true density",
                xs.iter().map(|&x| (x, ctx.dist.density(x))).collect(),
                (40, 40, 40),
            ),
            Curve::new(label, model, (200, 40, 40)),
        ],
    )?;
    Ok(file_name(&path))
}

/// Draws `out/name`: sample paths from recorded states, one `(n, 1)` tensor per point of a
/// uniform grid on [0, 1].
fn paths_png(out: &Path, name: &str, title: &str, states: &[Tensor]) -> Result<String> {
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
    Ok(file_name(&path))
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
) -> Result<String> {
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
    Ok(file_name(&path))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn progress(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] epoch {pos}/{len} ETA {eta} {msg}",
        )
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

/// The exact evaluation's settings for this invocation; `None` with `--exact-points 0`.
fn exact_config(ctx: &Ctx) -> Option<exact::ExactConfig> {
    (ctx.args.exact_points > 0).then(|| exact::ExactConfig {
        n_points: ctx.args.exact_points as usize,
        n_curve: if ctx.figures { 121 } else { 0 },
        ..exact::ExactConfig::default()
    })
}

/// Runs the exact bound chain (`compute`), prints it, draws the three curves over y (first
/// seed) and stores it in `rep`.
fn add_exact(
    ctx: &Ctx,
    rep: &mut ModelReport,
    key: &str,
    label: &str,
    compute: impl FnOnce(&exact::ExactConfig) -> sde_experiments::Result<exact::ExactOutcome>,
) -> Result<()> {
    let Some(config) = exact_config(ctx) else {
        return Ok(());
    };
    let out = compute(&config).with_context(|| format!("exact evaluation of {label}"))?;
    let e = &out.report;
    println!(
        "{label} exact ({} points, {} cells on [{:.1}, {:.1}]): log p(y) {:.4} ± {:.4}; ELBO_ODE {:.4} ± {:.4}; ∫R {:.4} ± {:.4}; ELBO_SDE (quadrature) {:.4} ± {:.4}; log p₁(y) {:.4}{}; bounds hold at {:.1} % of points; {:.1} s",
        e.n_points, e.grid.n_cells, e.grid.x_min, e.grid.x_max,
        e.log_likelihood.value, e.log_likelihood.error, e.elbo_ode.value, e.elbo_ode.error,
        e.reverse_discrepancy.value, e.reverse_discrepancy.error, e.elbo_sde.value, e.elbo_sde.error,
        e.log_density.value,
        e.pf_ode_log_density.map_or(String::new(), |v| format!(" (probability-flow ODE {v:.4})")),
        100.0 * e.bounds_hold, e.seconds
    );
    if ctx.figures && !out.curve.is_empty() {
        let t0 = Instant::now();
        let path = ctx.out.join(format!("{key}_bounds.png"));
        let curve = |f: fn(&sde_variational::exact::ChainPoint) -> f64| -> Vec<(f64, f64)> {
            out.curve.iter().map(|p| (p.y, f(p))).collect()
        };
        // The bulk of the data, and log-densities from a little below the true one's lowest
        // there (the models' tails fall far below it and would flatten the rest).
        let shown: Vec<f64> = out
            .curve
            .iter()
            .filter(|p| p.y.abs() <= 14.0)
            .map(|p| ctx.dist.density(p.y).ln())
            .collect();
        let lo = shown.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = shown.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut figure = Figure::new(
            format!("{label}: the bound chain over y (exact, Fokker–Planck)"),
            "y",
            "nats",
        )
        .with_x_range(-14.0, 14.0);
        if lo.is_finite() && hi.is_finite() {
            figure = figure.with_y_range(lo - 4.0, hi + 1.0);
        }
        plot::line_figure(
            &path,
            &figure,
            &[
                Curve::new(
                    "true log density",
                    out.curve
                        .iter()
                        .map(|p| (p.y, ctx.dist.density(p.y).ln()))
                        .collect(),
                    (120, 120, 120),
                ),
                // Lowest bound first, log p(y) last and thin: where the bounds are tight the
                // curves coincide, and each stays visible inside the one drawn before it.
                Curve::new("ELBO_SDE", curve(|p| p.elbo_sde), (200, 40, 40)).with_width(5),
                Curve::new("ELBO_ODE", curve(|p| p.elbo_ode), (30, 90, 180)).with_width(3),
                Curve::new("log p(y)", curve(|p| p.log_likelihood), (20, 20, 20)).with_width(1),
            ],
        )?;
        rep.figures.push(file_name(&path));
        rep.figure_seconds += t0.elapsed().as_secs_f64();
    }
    rep.exact = Some(out.report);
    Ok(())
}

/// Compares a flow's CNF likelihood with its Liouville density, prints it and stores it in
/// `rep`.
fn add_flow_check(
    ctx: &Ctx,
    rep: &mut ModelReport,
    label: &str,
    flow: &sde_variational::NeuralOde,
    dtype: candle_core::DType,
) -> Result<()> {
    let Some(config) = exact_config(ctx) else {
        return Ok(());
    };
    let c = exact::flow_check(flow, &ctx.data.validation, &config, (dtype, &ctx.device))
        .with_context(|| format!("Liouville check of {label}"))?;
    println!(
        "{label} Liouville check ({} points, {} cells): CNF log p₁(y) {:.4} ± {:.4}, Liouville {:.4} ± {:.4}; mean |difference| {:.4}, max {:.4}; {:.1} s",
        c.n_points, c.n_cells, c.cnf_log_likelihood.value, c.cnf_log_likelihood.error,
        c.liouville_log_likelihood.value, c.liouville_log_likelihood.error,
        c.mean_abs_difference, c.max_abs_difference, c.seconds
    );
    rep.flow_check = Some(c);
    Ok(())
}
