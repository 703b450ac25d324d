//! The report of `cargo xtask reproduce`, typed: [`Report`] is serialised to `report.json`,
//! rendered to `report.md` ([`Report::to_markdown`]), and each model's training curve is
//! written as CSV ([`write_curve_csv`]). The reference code's figures (docs/REFERENCE.md,
//! docs/REFERENCE-TIMINGS.md) are typed once, in [`reference()`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use sde_experiments::exact::{ExactReport, FlowCheck};
use sde_experiments::Evaluation;
use serde::Serialize;

/// Version of the `report.json` layout; raised when a key changes meaning or disappears.
pub const SCHEMA: u32 = 2;

/// Everything one `cargo xtask reproduce` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Layout version ([`SCHEMA`]).
    pub schema: u32,
    /// Whether this was a shortened `--quick` run (numbers not comparable with the paper's).
    pub quick: bool,
    /// The training seeds (one run per seed; the figures and details come from the first).
    pub seeds: Vec<u64>,
    /// Factor applied to every model's epochs (`--epochs-scale`).
    pub epochs_scale: f64,
    /// The data set.
    pub data: DataReport,
    /// One entry per model run, keyed `ode`, `sde`, `vdm`, `fm`, `sm`, `fm_elbo`, `sde_flow`.
    pub models: BTreeMap<String, ModelReport>,
    /// Wall time of the whole command (all seeds, evaluation and figures), seconds.
    pub total_seconds: f64,
    /// Peak resident memory of the process (Linux `VmHWM`), bytes; `None` elsewhere.
    pub peak_memory_bytes: Option<u64>,
    /// The reference code's wall time for all four paper models, seconds.
    pub reference_total_seconds: f64,
}

/// The data set and its exact figures.
#[derive(Debug, Clone, Serialize)]
pub struct DataReport {
    /// `laplace-mixture` (the paper's), `laplace` or `gaussian`.
    pub name: String,
    /// Seed of the draw.
    pub seed: u64,
    /// Training points.
    pub n_train: usize,
    /// Validation points (those the models are evaluated on).
    pub n_validation: usize,
    /// `E_p[log p(y)]` of the distribution (negative differential entropy).
    pub population_log_likelihood: f64,
    /// Mean `log p(y)` of the training sample.
    pub train_true_log_likelihood: f64,
    /// Mean `log p(y)` of the validation sample: the ceiling every model is compared with.
    pub val_true_log_likelihood: f64,
}

/// Which figure judges a model, as in the paper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Headline {
    /// The exact validation log-likelihood (ODE models).
    LogLikelihood,
    /// The validation ELBO, a lower bound (SDE models).
    Elbo,
}

/// The three ELBO terms, validation means: `ELBO = reconstruction − prior_kl − diffusion`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Terms {
    /// `E_{q_1}[log p(y | x_1)]`.
    pub reconstruction: f64,
    /// `KL(q_0 ‖ p_0)`.
    pub prior_kl: f64,
    /// `∫₀¹ F(t) dt`, the drift-matching term.
    pub diffusion: f64,
}

/// VDM's learned log-SNR endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Schedule {
    /// `λ(0)`.
    pub lambda_0: f64,
    /// `λ(1)`.
    pub lambda_1: f64,
}

/// Distances between generated samples and the validation set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SampleQuality {
    /// Number of generated samples.
    pub n: usize,
    /// Two-sample Kolmogorov–Smirnov statistic.
    pub ks: f64,
    /// Wasserstein-1 distance.
    pub w1: f64,
}

/// The reference code's figure for a model (docs/REFERENCE-TIMINGS.md).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Reference {
    /// The reference model's headline figure under the same estimator as ours.
    pub value: f64,
    /// Its standard error.
    pub se: f64,
    /// What the figure is.
    pub what: &'static str,
    /// Its training wall time on the reference machine kind, seconds.
    pub train_seconds: f64,
    /// Its peak memory, bytes.
    pub peak_memory_bytes: u64,
}

/// The spread of the headline figure over seeds (`--seeds K`, K > 1).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeedSpread {
    /// The headline figure of each seed, in seed order.
    pub values: Vec<f64>,
    /// Their mean.
    pub mean: f64,
    /// Their sample standard deviation.
    pub sd: f64,
    /// Training seconds of each seed.
    pub train_seconds: Vec<f64>,
}

impl SeedSpread {
    /// The spread of `values` (with their training times).
    pub fn new(values: Vec<f64>, train_seconds: Vec<f64>) -> Self {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        Self {
            values,
            mean,
            sd: var.sqrt(),
            train_seconds,
        }
    }
}

/// The spread of the exact chain's figures over seeds (`--seeds K`, K > 1).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExactSpread {
    /// `log p(y)`, mean over points, per seed.
    pub log_likelihood: SeedSpread,
    /// `ELBO_ODE`.
    pub elbo_ode: SeedSpread,
    /// `∫R dt`.
    pub reverse_discrepancy: SeedSpread,
}

impl ExactSpread {
    /// The spread of the chains of `reports` (one per seed), if every one has a chain.
    pub fn of(reports: &[&ModelReport]) -> Option<Self> {
        let chains: Vec<&ExactReport> = reports
            .iter()
            .map(|r| r.exact.as_ref())
            .collect::<Option<_>>()?;
        if chains.len() < 2 {
            return None;
        }
        let times: Vec<f64> = reports.iter().map(|r| r.train_seconds).collect();
        let spread = |f: fn(&ExactReport) -> f64| {
            SeedSpread::new(chains.iter().map(|c| f(c)).collect(), times.clone())
        };
        Some(Self {
            log_likelihood: spread(|c| c.log_likelihood.value),
            elbo_ode: spread(|c| c.elbo_ode.value),
            reverse_discrepancy: spread(|c| c.reverse_discrepancy.value),
        })
    }
}

/// One model's results.
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    /// Human-readable name.
    pub title: String,
    /// Which of the figures below judges it.
    pub headline: Headline,
    /// Exact validation log-likelihood (ODE, FM, and the probability flow of SM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_log_likelihood: Option<f64>,
    /// Its standard error over points.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_log_likelihood_se: Option<f64>,
    /// Validation ELBO (SDE, VDM, SM; FM's monitored or σ-weighted ELBO).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_elbo: Option<f64>,
    /// Its Monte-Carlo standard error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_elbo_se: Option<f64>,
    /// The ELBO's terms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terms: Option<Terms>,
    /// Draws of `(t, ε)` per validation point behind the ELBO.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_draws: Option<usize>,
    /// VDM's learned schedule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// Epochs trained.
    pub epochs: usize,
    /// Training wall time (with periodic validation), seconds.
    pub train_seconds: f64,
    /// Of which periodic validation, seconds.
    pub validation_seconds: f64,
    /// Final evaluation and sampling, seconds.
    pub eval_seconds: f64,
    /// Drawing the figures, seconds.
    pub figure_seconds: f64,
    /// Generated samples against the validation set.
    pub samples: SampleQuality,
    /// Further model-specific figures (named; e.g. `val_log_likelihood_rk2`, `beta1`).
    pub extra: BTreeMap<String, f64>,
    /// The reference code's figure, for the paper's four models.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
    /// Spread over seeds, when more than one was run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seeds: Option<SeedSpread>,
    /// The exact bound chain from the model's Fokker–Planck marginals (SDE, VDM, SM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact: Option<ExactReport>,
    /// The chain's spread over seeds, when more than one was run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact_seeds: Option<ExactSpread>,
    /// The Liouville cross-check of the CNF likelihood (ODE, FM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow_check: Option<FlowCheck>,
    /// Figure files (PNG; an SVG of each lies beside it).
    pub figures: Vec<String>,
    /// The training curve's CSV file.
    pub curve_csv: String,
}

impl ModelReport {
    /// The headline figure and its standard error.
    pub fn headline_value(&self) -> (f64, f64) {
        let (v, se) = match self.headline {
            Headline::LogLikelihood => (self.val_log_likelihood, self.val_log_likelihood_se),
            Headline::Elbo => (self.val_elbo, self.val_elbo_se),
        };
        (v.unwrap_or(f64::NAN), se.unwrap_or(f64::NAN))
    }
}

/// The reference code's figures (docs/REFERENCE-TIMINGS.md) for the paper's four models.
pub fn reference(model: &str) -> Option<Reference> {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    let r = |value, se, what, train_seconds, gib: f64| Reference {
        value,
        se,
        what,
        train_seconds,
        peak_memory_bytes: (gib * GIB) as u64,
    };
    match model {
        "ode" => Some(r(
            -3.0259,
            0.0095,
            "exact log-likelihood, RK4, correct time alignment",
            208.0,
            16.1,
        )),
        "sde" => Some(r(-3.038, 0.008, "ELBO, 20 draws per point", 63.0, 0.9)),
        "vdm" => Some(r(-3.320, 0.015, "ELBO, 20 draws per point", 55.0, 0.8)),
        "fm" => Some(r(
            -3.023,
            0.007,
            "exact log-likelihood (probability-flow ODE, RK4)",
            57.0,
            0.9,
        )),
        _ => None,
    }
}

/// The reference code's training time for all four paper models, seconds.
pub const REFERENCE_TOTAL_SECONDS: f64 = 384.0;

/// The order models appear in: the paper's four, then the extras.
const ORDER: [&str; 7] = ["ode", "sde", "vdm", "fm", "sm", "fm_elbo", "sde_flow"];

impl Report {
    /// The models in display order.
    fn ordered(&self) -> impl Iterator<Item = (&String, &ModelReport)> {
        let rank = |k: &str| ORDER.iter().position(|o| *o == k).unwrap_or(ORDER.len());
        let mut v: Vec<_> = self.models.iter().collect();
        v.sort_by_key(|(k, _)| rank(k));
        v.into_iter()
    }

    /// `report.md`: the table of results against the truth and the reference, and the figures.
    pub fn to_markdown(&self) -> String {
        let d = &self.data;
        let mut s = String::new();
        let _ = writeln!(s, "# Reproduction report\n");
        if self.quick {
            let _ = writeln!(
                s,
                "**Quick run** (`--quick`): shortened training, numbers not comparable with the paper's.\n"
            );
        }
        let _ = writeln!(
            s,
            "Data: `{}`, {} training / {} validation points (seed {}). True log-likelihood of the validation sample **{:.4}** (population {:.5}). Seeds {:?}, epochs × {}. Total {:.1} s (the reference code: ≈ {:.0} s for the four paper models); peak memory {}.\n",
            d.name,
            d.n_train,
            d.n_validation,
            d.seed,
            d.val_true_log_likelihood,
            d.population_log_likelihood,
            self.seeds,
            self.epochs_scale,
            self.total_seconds,
            self.reference_total_seconds,
            self.peak_memory_bytes
                .map_or("n/a".into(), |b| format!("{:.0} MiB", b as f64 / 1048576.0)),
        );
        let _ = writeln!(
            s,
            "| model | validation figure | ± SE | true LL | gap | training | KS | W1 | reference figure | reference training |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (key, m) in self.ordered() {
            let (v, se) = m.headline_value();
            let what = match m.headline {
                Headline::LogLikelihood => "log-likelihood",
                Headline::Elbo => "ELBO",
            };
            let value = match &m.seeds {
                Some(sp) => format!(
                    "{what} {:.4} (mean of {} seeds, sd {:.4})",
                    sp.mean,
                    sp.values.len(),
                    sp.sd
                ),
                None => format!("{what} {v:.4}"),
            };
            let (ref_v, ref_t) = match &m.reference {
                Some(r) => (
                    format!("{:.4} ± {:.4}", r.value, r.se),
                    format!("{:.0} s", r.train_seconds),
                ),
                None => ("—".into(), "—".into()),
            };
            let _ = writeln!(
                s,
                "| {} (`{key}`) | {value} | {se:.4} | {:.4} | {:.4} | {:.1} s | {:.3} | {:.3} | {ref_v} | {ref_t} |",
                m.title,
                d.val_true_log_likelihood,
                v - d.val_true_log_likelihood,
                m.train_seconds,
                m.samples.ks,
                m.samples.w1,
            );
        }
        let _ = writeln!(
            s,
            "\nThe gap is the validation figure minus the sample's true log-likelihood: an ELBO is a lower bound of the model's log-likelihood, which itself cannot beat the true density on average. Training times include periodic validation. KS and W1 compare generated samples with the validation set.\n"
        );
        self.exact_tables(&mut s);
        for (key, m) in self.ordered() {
            let _ = writeln!(s, "## {} (`{key}`)\n", m.title);
            if let Some(t) = &m.terms {
                let _ = writeln!(
                    s,
                    "ELBO terms: reconstruction {:.4}, KL {:.4}, diffusion {:.4}.\n",
                    t.reconstruction, t.prior_kl, t.diffusion
                );
            }
            if let Some(sc) = &m.schedule {
                let _ = writeln!(
                    s,
                    "Learned schedule: λ₀ = {:.3}, λ₁ = {:.3}.\n",
                    sc.lambda_0, sc.lambda_1
                );
            }
            if !m.extra.is_empty() {
                let items: Vec<String> =
                    m.extra.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
                let _ = writeln!(s, "{}.\n", items.join("; "));
            }
            let _ = writeln!(s, "Training curve: [{0}]({0}).\n", m.curve_csv);
            for f in &m.figures {
                let _ = writeln!(s, "![{f}]({f})");
            }
            let _ = writeln!(s);
        }
        s
    }
}

impl Report {
    /// The exact-likelihood tables of `report.md`: the bound chain of the SDE models and the
    /// Liouville cross-check of the flows.
    fn exact_tables(&self, s: &mut String) {
        let chains: Vec<_> = self
            .ordered()
            .filter_map(|(k, m)| m.exact.as_ref().map(|e| (k, m, e)))
            .collect();
        if !chains.is_empty() {
            let _ = writeln!(
                s,
                "## Exact likelihoods and the bound chain\n\nFrom each model's own marginals p_t, computed by solving its Fokker–Planck equation on a grid (docs/MATH.md §4): ELBO_SDE ≤ ELBO_ODE ≤ log p(y), with ELBO_ODE − ELBO_SDE = ∫R dt, the reverse discrepancy the SDE ELBO drops. Means over the first n validation points, ± the stated numerical error (the change when the grid, the time table and both quadratures are halved, plus the identity's residuals). `log p₁(y)` is the model's density at y itself; `PF-ODE` the probability-flow likelihood with the learned score (RK4) on the same points, equal to it only if the learned score is the model's own.\n"
            );
            let _ = writeln!(
                s,
                "| model | n | ELBO_SDE (Monte Carlo, all validation points) | ELBO_SDE (quadrature) | ∫R dt | ELBO_ODE | log p(y) | log p₁(y) | PF-ODE | max residual | bounds hold | seconds |"
            );
            let _ = writeln!(
                s,
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            let f = |x: &sde_experiments::exact::ExactFigure| {
                format!("{:.4} ± {:.1e}", x.value, x.error)
            };
            for (key, m, e) in chains {
                let mc = match (m.val_elbo, m.val_elbo_se) {
                    (Some(v), Some(se)) => format!("{v:.4} ± {se:.4}"),
                    _ => "—".into(),
                };
                let reverse = match &m.exact_seeds {
                    Some(sp) => format!(
                        "{} (seeds: {:.4} ± {:.4})",
                        f(&e.reverse_discrepancy),
                        sp.reverse_discrepancy.mean,
                        sp.reverse_discrepancy.sd
                    ),
                    None => f(&e.reverse_discrepancy),
                };
                let log_p = match &m.exact_seeds {
                    Some(sp) => format!(
                        "{} (seeds: {:.4} ± {:.4})",
                        f(&e.log_likelihood),
                        sp.log_likelihood.mean,
                        sp.log_likelihood.sd
                    ),
                    None => f(&e.log_likelihood),
                };
                let elbo_ode = match &m.exact_seeds {
                    Some(sp) => format!(
                        "{} (seeds: {:.4} ± {:.4})",
                        f(&e.elbo_ode),
                        sp.elbo_ode.mean,
                        sp.elbo_ode.sd
                    ),
                    None => f(&e.elbo_ode),
                };
                let _ = writeln!(
                    s,
                    "| `{key}` | {} | {mc} | {} | {reverse} | {elbo_ode} | {log_p} | {} | {} | {:.1e} | {:.0} % | {:.1} |",
                    e.n_points,
                    f(&e.elbo_sde),
                    f(&e.log_density),
                    e.pf_ode_log_density.map_or("—".into(), |v| format!("{v:.4}")),
                    e.max_abs_residual,
                    100.0 * e.bounds_hold,
                    e.seconds,
                );
            }
            let _ = writeln!(s);
        }
        let flows: Vec<_> = self
            .ordered()
            .filter_map(|(k, m)| m.flow_check.as_ref().map(|c| (k, c)))
            .collect();
        if !flows.is_empty() {
            let _ = writeln!(
                s,
                "The flows' CNF likelihood (RK4) against the density of their Liouville equation on a grid (mean over the first n validation points, ± the change on halving steps or grid):\n"
            );
            let _ = writeln!(
                s,
                "| model | n | CNF log p₁(y) | Liouville log p₁(y) | mean \\|difference\\| | max \\|difference\\| | seconds |"
            );
            let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
            for (key, c) in flows {
                let _ = writeln!(
                    s,
                    "| `{key}` | {} | {:.4} ± {:.1e} | {:.4} ± {:.1e} | {:.4} | {:.4} | {:.1} |",
                    c.n_points,
                    c.cnf_log_likelihood.value,
                    c.cnf_log_likelihood.error,
                    c.liouville_log_likelihood.value,
                    c.liouville_log_likelihood.error,
                    c.mean_abs_difference,
                    c.max_abs_difference,
                    c.seconds
                );
            }
            let _ = writeln!(s);
        }
    }
}

/// Writes a training curve as CSV: `epoch,train_loss,grad_norm`, every training metric, then
/// every validation metric (empty where the epoch was not validated) and its standard error.
pub fn write_curve_csv(path: &Path, curve: &[Evaluation]) -> Result<()> {
    let train_names: Vec<String> = curve
        .first()
        .map(|e| e.train_metrics.iter().map(|(n, _)| n.clone()).collect())
        .unwrap_or_default();
    let mut val_names: Vec<String> = Vec::new();
    for e in curve {
        for m in e.validation.iter().flat_map(|v| &v.metrics) {
            if !val_names.contains(&m.name) {
                val_names.push(m.name.clone());
            }
        }
    }
    let mut s = String::from("epoch,train_loss,grad_norm");
    for n in &train_names {
        let _ = write!(s, ",train_{n}");
    }
    for n in &val_names {
        let _ = write!(s, ",val_{n},val_{n}_se");
    }
    s.push('\n');
    for e in curve {
        let _ = write!(s, "{},{},{}", e.epoch, e.train_loss, e.grad_norm);
        for n in &train_names {
            let v = e.train_metrics.iter().find(|(m, _)| m == n).map(|p| p.1);
            let _ = write!(s, ",{}", v.map_or(String::new(), |v| v.to_string()));
        }
        for n in &val_names {
            let m = e
                .validation
                .iter()
                .flat_map(|v| &v.metrics)
                .find(|m| &m.name == n);
            match m {
                Some(m) => {
                    let se = m.se.map_or(String::new(), |v| v.to_string());
                    let _ = write!(s, ",{},{se}", m.value);
                }
                None => s.push_str(",,"),
            }
        }
        s.push('\n');
    }
    std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sde_experiments::exact::{ExactFigure, GridReport};

    fn figure(value: f64) -> ExactFigure {
        ExactFigure { value, error: 1e-4 }
    }

    fn model(reverse: f64) -> ModelReport {
        ModelReport {
            title: "SDE".into(),
            headline: Headline::Elbo,
            val_log_likelihood: None,
            val_log_likelihood_se: None,
            val_elbo: Some(-3.2),
            val_elbo_se: Some(0.01),
            terms: None,
            eval_draws: Some(20),
            schedule: None,
            epochs: 1,
            train_seconds: 1.0,
            validation_seconds: 0.0,
            eval_seconds: 0.0,
            figure_seconds: 0.0,
            samples: SampleQuality {
                n: 1,
                ks: 0.1,
                w1: 0.2,
            },
            extra: BTreeMap::new(),
            reference: None,
            seeds: None,
            exact: Some(ExactReport {
                n_points: 10,
                log_likelihood: figure(-3.0),
                elbo_ode: figure(-3.05),
                reverse_discrepancy: figure(reverse),
                elbo_sde: figure(-3.05 - reverse),
                forward_discrepancy: figure(4.0),
                kl_end: figure(3.0),
                log_density: figure(-3.01),
                pf_ode_log_density: None,
                mean_abs_residual: 1e-5,
                max_abs_residual: 2e-5,
                bounds_hold: 1.0,
                grid: GridReport {
                    x_min: -16.0,
                    x_max: 16.0,
                    n_cells: 800,
                    n_time_nodes: 32,
                    n_hermite: 16,
                    n_table_times: 161,
                    fp_steps: 1000,
                },
                seconds: 1.5,
            }),
            exact_seeds: None,
            flow_check: None,
            figures: Vec::new(),
            curve_csv: "sde_curve.csv".into(),
        }
    }

    #[test]
    fn the_exact_chain_gets_its_table_json_keys_and_seed_spread() {
        let (a, b) = (model(0.1), model(0.3));
        let spread = ExactSpread::of(&[&a, &b]).unwrap();
        assert!((spread.reverse_discrepancy.mean - 0.2).abs() < 1e-12);
        assert!(ExactSpread::of(&[&a]).is_none());
        let mut a = a;
        a.exact_seeds = Some(spread);
        let report = Report {
            schema: SCHEMA,
            quick: false,
            seeds: vec![0, 1],
            epochs_scale: 1.0,
            data: DataReport {
                name: "laplace-mixture".into(),
                seed: 0,
                n_train: 1,
                n_validation: 1,
                population_log_likelihood: -2.98,
                train_true_log_likelihood: -2.98,
                val_true_log_likelihood: -2.98,
            },
            models: BTreeMap::from([("sde".to_string(), a)]),
            total_seconds: 1.0,
            peak_memory_bytes: None,
            reference_total_seconds: REFERENCE_TOTAL_SECONDS,
        };
        let md = report.to_markdown();
        assert!(
            md.contains("## Exact likelihoods and the bound chain"),
            "{md}"
        );
        assert!(md.contains("| `sde` | 10 | -3.2000 ± 0.0100 | -3.1500 ± 1.0e-4 | 0.1000 ± 1.0e-4 (seeds: 0.2000"), "{md}");
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        let exact = &json["models"]["sde"]["exact"];
        for key in ["log_likelihood", "elbo_ode", "reverse_discrepancy"] {
            assert!(
                exact[key]["value"].is_f64() && exact[key]["error"].is_f64(),
                "{key}"
            );
        }
        assert!(json["models"]["sde"]["exact_seeds"]["reverse_discrepancy"]["sd"].is_f64());
    }
}
