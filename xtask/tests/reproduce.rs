//! The README's first command, shortened: `cargo xtask reproduce --quick` writes a report with
//! the promised keys and the figures.

use std::process::Command;

#[test]
fn quick_reproduce_writes_report_and_figures() {
    let out = std::env::temp_dir().join(format!("sde-reproduce-test-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["reproduce", "--quick", "--out"])
        .arg(&out)
        .env("CANDLE_NUM_THREADS", "1")
        .env("RAYON_NUM_THREADS", "1")
        .status()
        .expect("run xtask");
    assert!(status.success());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let num = |path: &str| {
        report
            .pointer(path)
            .and_then(|v| v.as_f64())
            .unwrap_or_else(|| panic!("report.json lacks {path}"))
    };
    // The sample's true value is near the population's −2.98755 (the 2,000-point quarter of the validation set: ±0.1).
    assert!((num("/data/population_log_likelihood") + 2.98755).abs() < 1e-4);
    assert!((num("/data/val_true_log_likelihood") + 2.98755).abs() < 0.1);
    // Twenty quick epochs lift a random net (≈ −4.7) to within 0.25 nats of the truth
    // (measured: −3.08 against −2.98).
    let ll = num("/models/ode/val_log_likelihood");
    assert!(ll > num("/data/val_true_log_likelihood") - 0.25, "{ll}");
    assert!(num("/models/ode/train_seconds") > 0.0);
    assert_eq!(num("/models/ode/epochs"), 20.0);
    // The SDE model after 100 quick epochs (measured: ELBO ≈ −3.2, KS ≈ 0.05). An ELBO is a
    // lower bound of the model's likelihood, which on average cannot beat the data's own
    // density (Gibbs' inequality) beyond the validation sample's noise (SE ≈ 0.05 on 2,000
    // points): so it lies below the truth, and training brings it within 0.6 nats.
    let elbo = num("/models/sde/val_elbo");
    let truth = num("/data/val_true_log_likelihood");
    assert!(elbo < truth + 0.05 && elbo > truth - 0.6, "{elbo}");
    assert!(num("/models/sde/val_elbo_se") > 0.0);
    let terms = num("/models/sde/terms/reconstruction")
        - num("/models/sde/terms/prior_kl")
        - num("/models/sde/terms/diffusion");
    assert!((terms - elbo).abs() < 1e-9, "the terms add up to the ELBO");
    assert!(num("/models/sde/samples/ks") < 0.2);
    assert_eq!(num("/models/sde/epochs"), 100.0);
    // The VDM after 300 quick epochs (it converges slowest; measured: −3.33 after 300, −4.6
    // after 100): a bound below the truth, within a nat of it, terms that add up, a schedule
    // that keeps λ₀ < λ₁.
    let vdm = num("/models/vdm/val_elbo");
    assert!(vdm < truth + 0.05 && vdm > truth - 1.0, "{vdm}");
    let terms = num("/models/vdm/terms/reconstruction")
        - num("/models/vdm/terms/prior_kl")
        - num("/models/vdm/terms/diffusion");
    assert!((terms - vdm).abs() < 1e-9);
    assert!(num("/models/vdm/schedule/lambda_0") < num("/models/vdm/schedule/lambda_1"));
    // Measured after 300 quick epochs: KS 0.08; 0.3 would be samples that miss whole peaks.
    assert!(num("/models/vdm/samples/ks") < 0.3);
    assert_eq!(num("/models/vdm/epochs"), 300.0);
    // Flow matching after 300 quick epochs: its exact likelihood is a likelihood, so on
    // average below the truth (up to the sample's noise), and training brings it within a
    // nat; the loss contains the irreducible conditional variance (≈ 8.9 at convergence).
    let fm = num("/models/fm/val_log_likelihood");
    assert!(fm < truth + 0.05 && fm > truth - 1.0, "{fm}");
    assert!(num("/models/fm/val_loss") > 5.0);
    assert!(num("/models/fm/samples/ks") < 0.3);
    assert!(num("/total_seconds") > 0.0);
    for png in [
        "ode_density.png",
        "ode_paths.png",
        "ode_training.png",
        "sde_density.png",
        "sde_paths.png",
        "sde_alpha.png",
        "sde_beta.png",
        "sde_sigma.png",
        "sde_training.png",
        "vdm_density.png",
        "vdm_paths.png",
        "vdm_schedule.png",
        "vdm_training.png",
        "fm_density.png",
        "fm_paths.png",
        "fm_training.png",
    ] {
        let bytes = std::fs::read(out.join(png)).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 5_000,
            "{png}"
        );
    }
    std::fs::remove_dir_all(&out).ok();
}
