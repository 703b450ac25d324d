//! The exact evaluation of short-trained models: the bound chain holds per point within its
//! stated errors, the identity `ELBO_ODE − ELBO_SDE = ∫R` holds to the numerical error, the
//! quadrature ELBO agrees with the Monte-Carlo one, and a flow's Liouville density agrees with
//! its CNF likelihood.

use candle_core::{DType, Device};
use rand::SeedableRng;
use sde_experiments::exact::{flow_check, sde_chain, vp_chain, ExactConfig, ExactOutcome};
use sde_experiments::sde::ElboEstimate;
use sde_experiments::{fm, sde, sm, train::column, vdm, Dataset, LaplaceMixture, TrainRng};

fn small_data() -> Dataset {
    Dataset::draw(&LaplaceMixture::paper(), 400, 500, 3).unwrap()
}

fn exact_config() -> ExactConfig {
    ExactConfig {
        n_points: 40,
        n_curve: 0,
        dx: 0.05,
        ..ExactConfig::default()
    }
}

/// Checks the chain of `out` and compares its quadrature ELBO with the Monte-Carlo `mc` on the
/// same points.
fn check_chain(name: &str, out: &ExactOutcome, mc: &ElboEstimate) {
    let r = &out.report;
    eprintln!("{name}: {r:#?}");
    eprintln!("{name}: Monte-Carlo ELBO {} ± {}", mc.elbo, mc.se);
    for (p, e) in &out.points {
        // The bounds, per point, within the points' stated errors.
        assert!(
            p.elbo_sde <= p.elbo_ode + e.elbo_sde + e.elbo_ode,
            "{name} y {}: ELBO_SDE {} > ELBO_ODE {}",
            p.y,
            p.elbo_sde,
            p.elbo_ode
        );
        assert!(
            p.elbo_ode <= p.log_likelihood + e.elbo_ode + e.log_likelihood,
            "{name} y {}: ELBO_ODE {} > log p {}",
            p.y,
            p.elbo_ode,
            p.log_likelihood
        );
    }
    // ELBO_ODE − ELBO_SDE = ∫R per point, within the change of the three figures on halving
    // the resolution (the stated errors without their residual terms), with a floor of 1e-3
    // nats for points where the two resolutions happen to agree closely.
    let mut sum_full = 0.0;
    let mut sum_coarse = 0.0;
    for ((p, _), c) in out.points.iter().zip(&out.coarse) {
        let halving = (p.elbo_ode - c.elbo_ode).abs()
            + (p.elbo_sde - c.elbo_sde).abs()
            + (p.reverse - c.reverse).abs();
        assert!(
            p.identity_residual().abs() <= halving.max(1e-3),
            "{name} y {}: residual {} (halving changes {halving})",
            p.y,
            p.identity_residual()
        );
        sum_full += p.identity_residual().abs();
        sum_coarse += c.identity_residual().abs();
    }
    // And the residual shrinks with resolution.
    assert!(sum_full < sum_coarse, "{name}: {sum_full} vs {sum_coarse}");
    // The quadrature ELBO_SDE is what the Monte-Carlo estimate estimates: within 3 SE (plus
    // the stated error).
    assert!(
        (r.elbo_sde.value - mc.elbo).abs() <= 3.0 * mc.se + r.elbo_sde.error,
        "{name}: quadrature {} vs Monte Carlo {} ± {}",
        r.elbo_sde.value,
        mc.elbo,
        mc.se
    );
    assert_eq!(r.bounds_hold, 1.0, "{name}");
    assert!(r.reverse_discrepancy.value >= 0.0);
}

/// A short run of small networks: 20 epochs of 2-16-16 networks, few draws and samples (the
/// experiment configurations share these field names).
macro_rules! shrink {
    ($c:ident) => {
        $c.train.epochs = 20;
        $c.train.batch_size = 100;
        $c.train.validate_every = 20;
        $c.train.adam.lr = 3e-3;
        $c.widths = vec![2, 16, 16, 1];
        $c.eval_draws = 2;
        $c.n_samples = 100;
        $c.n_steps = 10;
    };
}

#[test]
fn the_sde_models_chain_holds() {
    let data = small_data();
    let device = Device::Cpu;
    let val = column(&data.validation[..40], DType::F32, &device).unwrap();
    let config = exact_config();

    let mut c = sde::SdeConfig::reference();
    shrink!(c);
    let t0 = std::time::Instant::now();
    // Both variational families: the paper's Gaussian and the sinh–arcsinh flow.
    for (name, family) in [
        ("sde", sde::Family::Gaussian),
        ("sde-flow", sde::Family::SinhArcsinh),
    ] {
        c.family = family;
        let run = sde::run(&c, &data, &device, |_| {}).unwrap();
        eprintln!("{name} training {:.2} s", t0.elapsed().as_secs_f64());
        let model = run.model.sde.detached().unwrap();
        let delta = run.model.process.beta1().unwrap().detach();
        let out = sde_chain(
            &run.model.variational_detached().unwrap(),
            &model,
            &delta,
            &data.validation,
            &config,
            (DType::F32, &device),
        )
        .unwrap();
        let mc =
            sde::evaluate_elbo(&run.model, &val, 200, &mut TrainRng::seed_from_u64(5)).unwrap();
        check_chain(name, &out, &mc);
    }
}

#[test]
fn the_vdm_and_score_models_chain_holds_and_their_flows_are_compared() {
    let data = small_data();
    let device = Device::Cpu;
    let val = column(&data.validation[..40], DType::F32, &device).unwrap();
    let config = exact_config();

    let mut c = vdm::VdmConfig::reference();
    shrink!(c);
    let run = vdm::run(&c, &data, &device, |_| {}).unwrap();
    let model = run.model.sde.detached().unwrap();
    let out = vp_chain(&model, &data.validation, &config, (DType::F32, &device)).unwrap();
    let mc = vdm::evaluate_elbo(&run.model, &val, 200, &mut TrainRng::seed_from_u64(5)).unwrap();
    check_chain("vdm", &out, &mc);
    assert!(out.report.pf_ode_log_density.is_some_and(f64::is_finite));

    let mut c = sm::SmConfig::reference();
    shrink!(c);
    let run = sm::run(&c, &data, &device, |_| {}).unwrap();
    let model = run.model.sde.detached().unwrap();
    let out = vp_chain(&model, &data.validation, &config, (DType::F32, &device)).unwrap();
    let mc = sm::evaluate_elbo(&run.model, &val, 200, &mut TrainRng::seed_from_u64(5)).unwrap();
    check_chain("sm", &out, &mc);
}

#[test]
fn a_flows_liouville_density_matches_its_cnf_likelihood() {
    let data = small_data();
    let device = Device::Cpu;
    let mut c = fm::FmConfig::reference();
    c.train.epochs = 20;
    c.train.batch_size = 100;
    c.train.validate_every = 20;
    c.train.adam.lr = 3e-3;
    c.widths = vec![2, 16, 16, 1];
    c.n_samples = 100;
    c.n_steps = 20;
    let run = fm::run(&c, &data, &device, |_| {}).unwrap();
    let flow = run.model.flow().unwrap().detached().unwrap();
    let check = flow_check(
        &flow,
        &data.validation,
        &exact_config(),
        (DType::F32, &device),
    )
    .unwrap();
    eprintln!("{check:#?}");
    // Per point, the two likelihoods agree within the two solvers' stated errors (the change
    // on halving the grid, and the steps) plus the f32 network's rounding (1e-4).
    let tol = check.liouville_log_likelihood.error + check.cnf_log_likelihood.error + 1e-4;
    assert!(
        (check.liouville_log_likelihood.value - check.cnf_log_likelihood.value).abs() <= tol,
        "{check:?}"
    );
}
