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
    assert!(num("/models/fm/extra/val_loss") > 5.0);
    assert!(num("/models/fm/samples/ks") < 0.3);
    assert!(num("/total_seconds") > 0.0);
    assert!(num("/peak_memory_bytes") > 0.0);
    // Every paper model reports sample quality and the reference code's figure.
    for m in ["ode", "sde", "vdm", "fm"] {
        let ks = num(&format!("/models/{m}/samples/ks"));
        let w1 = num(&format!("/models/{m}/samples/w1"));
        assert!(
            ks > 0.0 && ks < 0.3 && w1 > 0.0 && w1 < 2.0,
            "{m}: {ks} {w1}"
        );
        assert!(num(&format!("/models/{m}/reference/value")) < -2.9);
        // The CSV curve has a header and one row per epoch.
        let csv = std::fs::read_to_string(out.join(format!("{m}_curve.csv"))).unwrap();
        let epochs = num(&format!("/models/{m}/epochs")) as usize;
        assert!(csv.starts_with("epoch,train_loss,grad_norm"), "{m}");
        assert_eq!(csv.lines().count(), epochs + 1, "{m}");
        // Every listed figure exists as PNG and SVG.
        let figures = report.pointer(&format!("/models/{m}/figures")).unwrap();
        for f in figures.as_array().unwrap() {
            let png = out.join(f.as_str().unwrap());
            assert!(png.exists(), "{}", png.display());
            let svg = std::fs::read_to_string(png.with_extension("svg")).unwrap();
            assert!(svg.contains("<svg"), "{}", png.display());
        }
    }
    // report.md: the table names every model and embeds its figures.
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for needle in [
        "| model |",
        "(`ode`)",
        "(`sde`)",
        "(`vdm`)",
        "(`fm`)",
        "![sde_density.png]",
    ] {
        assert!(md.contains(needle), "report.md lacks {needle}");
    }
    for png in [
        "sde_elbo_over_t.png",
        "vdm_alpha.png",
        "vdm_beta.png",
        "vdm_sigma.png",
        "vdm_elbo_over_t.png",
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

fn xtask(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env("CANDLE_NUM_THREADS", "1")
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .expect("run xtask")
}

#[test]
fn the_options_select_data_sizes_epochs_and_seeds() {
    let out = std::env::temp_dir().join(format!("sde-reproduce-opts-{}", std::process::id()));
    let o = xtask(&[
        "reproduce",
        "--quick",
        "--only",
        "vdm",
        "--data",
        "gaussian",
        "--n-train",
        "250",
        "--n-val",
        "300",
        "--epochs-scale",
        "0.1",
        "--seeds",
        "2",
        "--seed",
        "5",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let num = |path: &str| report.pointer(path).and_then(|v| v.as_f64()).unwrap();
    assert_eq!(report.pointer("/data/name").unwrap(), "gaussian");
    assert_eq!(num("/data/n_train"), 250.0);
    assert_eq!(num("/data/n_validation"), 300.0);
    // N(−1, 2²): −½ ln(2πe·4).
    let exact = -0.5 * (8.0 * std::f64::consts::PI * std::f64::consts::E).ln();
    assert!((num("/data/population_log_likelihood") - exact).abs() < 1e-12);
    // 300 quick epochs × 0.1.
    assert_eq!(num("/models/vdm/epochs"), 30.0);
    assert_eq!(
        report.pointer("/seeds").unwrap(),
        &serde_json::json!([5, 6])
    );
    let values = report
        .pointer("/models/vdm/seeds/values")
        .unwrap()
        .as_array()
        .unwrap();
    assert_eq!(values.len(), 2);
    assert!(values[0] != values[1], "two seeds, two results");
    assert!(num("/models/vdm/seeds/sd") > 0.0);
    assert!(report.pointer("/models/ode").is_none());
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn bad_options_fail_at_once_with_a_message_naming_them() {
    for (args, needle) in [
        (vec!["reproduce", "--epochs-scale", "0"], "--epochs-scale"),
        (vec!["reproduce", "--epochs-scale", "nan"], "--epochs-scale"),
        (vec!["reproduce", "--seeds", "0"], "--seeds"),
        (vec!["reproduce", "--n-train", "0"], "--n-train"),
        (vec!["reproduce", "--data", "cauchy"], "cauchy"),
        (vec!["reproduce", "--only", "gan"], "gan"),
        (vec!["reproduce", "--frobnicate"], "--frobnicate"),
        (
            vec!["reproduce", "--out", "/proc/no-such-dir/x"],
            "/proc/no-such-dir",
        ),
    ] {
        let o = xtask(&args);
        assert!(!o.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// A real `cargo xtask reproduce` process killed by a signal part-way, then resumed, writes the
/// same numbers as an uninterrupted run: the checkpoint holds everything training needs.
#[test]
fn a_killed_run_resumes_to_the_same_report() {
    let base = std::env::temp_dir().join(format!("sde-reproduce-kill-{}", std::process::id()));
    let (whole, killed) = (base.join("whole"), base.join("killed"));
    let args = |out: &std::path::Path| -> Vec<String> {
        [
            "reproduce",
            "--quick",
            "--only",
            "sde",
            "--epochs-scale",
            "4",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([out.to_str().unwrap().to_string()])
        .collect()
    };
    let o = xtask(&args(&whole).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // 400 epochs, validated and checkpointed every 200: kill as soon as the first checkpoint
    // is on disk, with half the training still to go.
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args(&killed))
        .env("CANDLE_NUM_THREADS", "1")
        .env("RAYON_NUM_THREADS", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start xtask");
    let checkpoint = killed.join("sde-quick.safetensors");
    let t0 = std::time::Instant::now();
    while !checkpoint.exists() {
        assert!(
            t0.elapsed().as_secs() < 120,
            "no checkpoint appeared within 120 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().expect("send SIGKILL");
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run was killed, not finished");
    assert!(
        !killed.join("report.json").exists(),
        "killed before writing its report"
    );

    let mut resume = args(&killed);
    resume.push("--resume".into());
    let o = xtask(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let read = |dir: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
    };
    let (a, b) = (read(&whole), read(&killed));
    for key in [
        "/models/sde/val_elbo",
        "/models/sde/val_elbo_se",
        "/models/sde/terms/reconstruction",
        "/models/sde/terms/prior_kl",
        "/models/sde/terms/diffusion",
        "/models/sde/samples/ks",
        "/models/sde/samples/w1",
        "/models/sde/epochs",
    ] {
        assert_eq!(a.pointer(key), b.pointer(key), "{key}");
    }
    std::fs::remove_dir_all(&base).ok();
}
