//! Tests of `sde_variational::optim`: Adam/AdamW steps against hand-written `f64` arithmetic
//! and against `candle_nn::AdamW`, gradient clipping, bit-identical resumption from a saved
//! state, input validation and the order of `sorted_vars`.

use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Init, Optimizer, ParamsAdamW, VarMap};
use sde_variational::optim::{sorted_vars, ParamMoments, StepStats};
use sde_variational::{Adam, AdamConfig, AdamState, Error, Result, WeightDecay};

/// The entries of `t` as `f64`s, flattened.
fn values(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?)
}

/// `max |a − b| / max |b|`.
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

fn f64_var(values: &[f64]) -> Result<Var> {
    Ok(Var::from_tensor(&Tensor::new(values, &Device::Cpu)?)?)
}

/// The gradients of `Σ_k Σ_i c_k[i] θ_k[i]`, which are exactly the `c_k`.
fn linear_grads(params: &[&Var], coefs: &[&[f64]]) -> Result<GradStore> {
    let mut loss = Tensor::new(0.0f64, &Device::Cpu)?;
    for (var, c) in params.iter().zip(coefs) {
        let c = Tensor::new(*c, &Device::Cpu)?
            .reshape(var.shape())?
            .to_dtype(var.dtype())?;
        let term = (var.as_tensor() * c)?.sum_all()?.to_dtype(DType::F64)?;
        loss = (loss + term)?;
    }
    Ok(loss.backward()?)
}

fn named(vars: &[(&str, &Var)]) -> Vec<(String, Var)> {
    vars.iter()
        .map(|(name, var)| (name.to_string(), (*var).clone()))
        .collect()
}

const LR: f64 = 0.1;
const LAMBDA: f64 = 0.05;
const THETA0: [f64; 3] = [0.5, -1.25, 2.0];
const GRADS: [[f64; 3]; 3] = [[0.3, -2.0, 1e-3], [-0.7, 0.5, 4.0], [1.5, -0.25, -3.0]];

/// Three Adam steps on `THETA0` with the gradients `GRADS`, written out step by step in plain
/// `f64` arithmetic, independently of the library.
fn three_steps_by_hand(decay: WeightDecay) -> [f64; 3] {
    let (beta1, beta2, eps) = (0.9f64, 0.999f64, 1e-8f64);
    let mut theta = THETA0;
    let mut m = [0.0f64; 3];
    let mut v = [0.0f64; 3];
    // Bias corrections for t = 1, 2, 3, with the powers multiplied out.
    let bc1 = [
        1.0 - beta1,
        1.0 - beta1 * beta1,
        1.0 - beta1 * beta1 * beta1,
    ];
    let bc2 = [
        1.0 - beta2,
        1.0 - beta2 * beta2,
        1.0 - beta2 * beta2 * beta2,
    ];
    for step in 0..3 {
        for i in 0..3 {
            let mut g = GRADS[step][i];
            match decay {
                WeightDecay::None => {}
                // Adam(weight_decay=λ): the L2 penalty's gradient λθ joins g.
                WeightDecay::Coupled(l) => g += l * theta[i],
                // AdamW: θ shrinks first.
                WeightDecay::Decoupled(l) => theta[i] *= 1.0 - LR * l,
            }
            m[i] = beta1 * m[i] + (1.0 - beta1) * g;
            v[i] = beta2 * v[i] + (1.0 - beta2) * g * g;
            let m_hat = m[i] / bc1[step];
            let v_hat_sqrt = v[i].sqrt() / bc2[step].sqrt();
            theta[i] -= LR * m_hat / (v_hat_sqrt + eps);
        }
    }
    theta
}

fn check_three_steps(decay: WeightDecay) -> Result<()> {
    let theta = f64_var(&THETA0)?;
    let config = AdamConfig {
        lr: LR,
        weight_decay: decay,
        ..AdamConfig::default()
    };
    let mut adam = Adam::new(named(&[("theta", &theta)]), config)?;
    for g in &GRADS {
        adam.step(&linear_grads(&[&theta], &[g])?)?;
    }
    let got = values(theta.as_tensor())?;
    let want = three_steps_by_hand(decay);
    // Same operations in `f64`, some in another order (lr / bc1 folded differently, the powers
    // of β multiplied out): a few ulps of the O(1) parameters, far inside 1e-15 relative.
    let err = rel_err(&got, &want);
    assert!(
        err < 1e-15,
        "{decay:?}: {got:?} vs {want:?} (rel err {err:e})"
    );
    assert_eq!(adam.state().step, 3);
    Ok(())
}

#[test]
fn no_decay_three_steps_by_hand() -> Result<()> {
    check_three_steps(WeightDecay::None)
}

#[test]
fn coupled_three_steps_by_hand() -> Result<()> {
    check_three_steps(WeightDecay::Coupled(LAMBDA))
}

#[test]
fn decoupled_three_steps_by_hand() -> Result<()> {
    check_three_steps(WeightDecay::Decoupled(LAMBDA))
}

#[test]
fn the_decay_conventions_differ() {
    let none = three_steps_by_hand(WeightDecay::None);
    let coupled = three_steps_by_hand(WeightDecay::Coupled(LAMBDA));
    let decoupled = three_steps_by_hand(WeightDecay::Decoupled(LAMBDA));
    // At λ = 0.05 and lr = 0.1 the conventions move the parameters apart by far more than
    // rounding (≥ 1e-4 here), so the tests above tell them apart.
    assert!(rel_err(&coupled, &none) > 1e-4);
    assert!(rel_err(&decoupled, &none) > 1e-4);
    assert!(rel_err(&coupled, &decoupled) > 1e-4);
}

/// A loss whose gradient depends on the parameters: `Σ w (θ − a)² + Σ tanh(θ)`.
fn nonlinear_loss(var: &Var) -> Result<Tensor> {
    let t = var.as_tensor();
    let a = Tensor::new(&[0.3f64, -0.8, 1.5, 0.0], &Device::Cpu)?
        .reshape(t.shape())?
        .to_dtype(t.dtype())?;
    let w = Tensor::new(&[1.0f64, 3.0, 0.5, 2.0], &Device::Cpu)?
        .reshape(t.shape())?
        .to_dtype(t.dtype())?;
    let quad = ((t - a)?.sqr()? * w)?.sum_all()?;
    Ok((quad + t.tanh()?.sum_all()?)?)
}

#[test]
fn decoupled_agrees_with_candle_adamw() -> Result<()> {
    let init = [0.9f64, -0.4, 0.2, 1.1];
    let ours = f64_var(&init)?;
    let theirs = f64_var(&init)?;
    let (lr, wd) = (0.05, 0.1);
    let config = AdamConfig {
        lr,
        weight_decay: WeightDecay::Decoupled(wd),
        ..AdamConfig::default()
    };
    let mut adam = Adam::new(named(&[("theta", &ours)]), config)?;
    let params = ParamsAdamW {
        lr,
        weight_decay: wd,
        ..ParamsAdamW::default()
    };
    let mut reference = AdamW::new(vec![theirs.clone()], params)?;
    for _ in 0..6 {
        adam.step(&nonlinear_loss(&ours)?.backward()?)?;
        reference.backward_step(&nonlinear_loss(&theirs)?)?;
    }
    let (a, b) = (values(ours.as_tensor())?, values(theirs.as_tensor())?);
    // candle computes m̂ / (√v̂ + ε) with v̂ = v / bc2 and θ(1 − lrλ) − lr m̂/…: the same
    // quantities in a different order, so the two differ by rounding, a few ulps per step.
    // 1e-12 leaves a margin of ~1e3 over that, and a formula difference (e.g. a wrong bias
    // correction) would show at 1e-3 or more.
    let err = rel_err(&a, &b);
    assert!(err < 1e-12, "{a:?} vs {b:?} (rel err {err:e})");
    // The parameters did move: the comparison is not between two untouched vectors.
    assert!(rel_err(&a, &init) > 1e-2);
    Ok(())
}

#[test]
fn clipping_matches_a_prescaled_gradient() -> Result<()> {
    // Two parameters with gradients (6, 0, 0) and (0, 8): global norm exactly 10.
    let (ga, gb) = ([6.0f64, 0.0, 0.0], [0.0f64, 8.0]);
    let (a1, b1) = (f64_var(&[0.1, 0.2, 0.3])?, f64_var(&[-0.5, 0.5])?);
    let (a2, b2) = (f64_var(&[0.1, 0.2, 0.3])?, f64_var(&[-0.5, 0.5])?);
    let clipping = AdamConfig {
        max_grad_norm: Some(1.0),
        ..AdamConfig::default()
    };
    let mut clipped = Adam::new(named(&[("a", &a1), ("b", &b1)]), clipping)?;
    let mut plain = Adam::new(named(&[("a", &a2), ("b", &b2)]), AdamConfig::default())?;

    let stats = clipped.step(&linear_grads(&[&a1, &b1], &[&ga, &gb])?)?;
    assert_eq!(
        stats,
        StepStats {
            grad_norm: 10.0,
            clipped: true
        }
    );
    // PyTorch's factor max / (norm + 1e-6), applied by hand to the unclipped gradients.
    let coef = 1.0 / (10.0 + 1e-6);
    let (sa, sb) = (ga.map(|g| g * coef), gb.map(|g| g * coef));
    let stats = plain.step(&linear_grads(&[&a2, &b2], &[&sa, &sb])?)?;
    assert!(!stats.clipped);

    // The same products in the same order: bit-identical parameters and moments.
    assert_eq!(values(a1.as_tensor())?, values(a2.as_tensor())?);
    assert_eq!(values(b1.as_tensor())?, values(b2.as_tensor())?);
    assert_eq!(clipped.state().moments, plain.state().moments);
    // The first moment is (1 − β1) times the clipped gradient (a direct check of the
    // scaling, which the first update itself hides: Adam's first step is ≈ lr·sign(g)).
    let m_a = &clipped.state().moments[0].m;
    assert_eq!(m_a[0], (1.0 - 0.9) * (6.0 * coef));
    Ok(())
}

#[test]
fn clipping_leaves_small_gradients_alone() -> Result<()> {
    // Norm √(0.3² + 0.4²) = 0.5 < 1.
    let g = [0.3f64, 0.4];
    let (a1, a2) = (f64_var(&[1.0, 2.0])?, f64_var(&[1.0, 2.0])?);
    let clipping = AdamConfig {
        max_grad_norm: Some(1.0),
        ..AdamConfig::default()
    };
    let mut clipped = Adam::new(named(&[("a", &a1)]), clipping)?;
    let mut plain = Adam::new(named(&[("a", &a2)]), AdamConfig::default())?;
    let stats = clipped.step(&linear_grads(&[&a1], &[&g])?)?;
    plain.step(&linear_grads(&[&a2], &[&g])?)?;
    assert!(!stats.clipped);
    // √(0.09 + 0.16) in f64: within an ulp or two of 0.5.
    assert!((stats.grad_norm - 0.5).abs() < 1e-15);
    assert_eq!(values(a1.as_tensor())?, values(a2.as_tensor())?);
    assert_eq!(clipped.state(), plain.state());
    Ok(())
}

#[test]
fn parameters_without_a_gradient_are_left_alone() -> Result<()> {
    let (a, b) = (f64_var(&[1.0, 2.0])?, f64_var(&[3.0])?);
    let mut adam = Adam::new(named(&[("a", &a), ("b", &b)]), AdamConfig::default())?;
    let stats = adam.step(&linear_grads(&[&a], &[&[1.0, -1.0]])?)?;
    assert_eq!(values(b.as_tensor())?, vec![3.0]);
    assert_ne!(values(a.as_tensor())?, vec![1.0, 2.0]);
    let state = adam.state();
    assert_eq!(state.step, 1);
    assert_eq!(state.moments[1].m, vec![0.0]);
    assert_eq!(state.moments[1].v, vec![0.0]);
    // Only a's gradient counts in the norm: √2.
    assert_eq!(stats.grad_norm, 2.0f64.sqrt());
    Ok(())
}

/// Parameters of several shapes (a matrix, a vector, a scalar) in `dtype`.
fn fresh_params(dtype: DType, from: Option<&[(String, Var)]>) -> Result<Vec<(String, Var)>> {
    let start: Vec<Tensor> = match from {
        Some(params) => params
            .iter()
            .map(|(_, v)| v.as_tensor().copy())
            .collect::<candle_core::Result<_>>()?,
        None => vec![
            Tensor::new(&[[0.4f64, -0.3], [1.2, 0.05]], &Device::Cpu)?.to_dtype(dtype)?,
            Tensor::new(&[0.7f64, -1.1, 0.2], &Device::Cpu)?.to_dtype(dtype)?,
            Tensor::new(0.9f64, &Device::Cpu)?.to_dtype(dtype)?,
        ],
    };
    let names = ["layer.weight", "layer.bias", "scale"];
    names
        .iter()
        .zip(start)
        .map(|(n, t)| Ok((n.to_string(), Var::from_tensor(&t)?)))
        .collect()
}

fn round_trip_loss(params: &[(String, Var)]) -> Result<Tensor> {
    let w = params[0].1.as_tensor();
    let b = params[1].1.as_tensor();
    let s = params[2].1.as_tensor();
    // Gradients depend on the parameters, so the trajectory depends on the state.
    let l1 = w.sqr()?.sum_all()?.sin()?;
    let l2 = (b.tanh()?.sum_all()? * s)?;
    let l3 = (s.sqr()? * 3.0)?;
    Ok((l1 + l2 + l3)?)
}

fn check_round_trip(dtype: DType) -> Result<()> {
    let config = AdamConfig {
        lr: 0.03,
        weight_decay: WeightDecay::Coupled(0.01),
        max_grad_norm: Some(0.5),
        ..AdamConfig::default()
    };
    let straight = fresh_params(dtype, None)?;
    let mut adam = Adam::new(straight.clone(), config)?;
    for _ in 0..5 {
        adam.step(&round_trip_loss(&straight)?.backward()?)?;
    }

    let first = fresh_params(dtype, None)?;
    let mut adam1 = Adam::new(first.clone(), config)?;
    for _ in 0..2 {
        adam1.step(&round_trip_loss(&first)?.backward()?)?;
    }
    let saved: AdamState = adam1.state();
    drop(adam1);
    let resumed = fresh_params(dtype, Some(&first))?;
    let mut adam2 = Adam::new(resumed.clone(), config)?;
    adam2.load_state(saved)?;
    for _ in 0..3 {
        adam2.step(&round_trip_loss(&resumed)?.backward()?)?;
    }

    for ((name, a), (_, b)) in straight.iter().zip(&resumed) {
        let bits = |v: &Var| -> Result<Vec<u64>> {
            Ok(values(v.as_tensor())?.iter().map(|x| x.to_bits()).collect())
        };
        assert_eq!(bits(a)?, bits(b)?, "{dtype:?} {name}");
        assert_eq!(a.dtype(), dtype);
        assert_eq!(a.dims(), b.dims());
    }
    assert_eq!(adam.state(), adam2.state());
    assert_eq!(adam2.state().step, 5);
    Ok(())
}

#[test]
fn state_round_trip_is_bit_identical_f64() -> Result<()> {
    check_round_trip(DType::F64)
}

#[test]
fn state_round_trip_is_bit_identical_f32() -> Result<()> {
    check_round_trip(DType::F32)
}

fn message(err: Error) -> String {
    err.to_string()
}

#[test]
fn load_state_refuses_mismatches() -> Result<()> {
    let (a, b) = (f64_var(&[1.0, 2.0])?, f64_var(&[3.0])?);
    let mut adam = Adam::new(named(&[("a", &a), ("b", &b)]), AdamConfig::default())?;
    adam.step(&linear_grads(&[&a, &b], &[&[1.0, 2.0], &[3.0]])?)?;
    let good = adam.state();
    let entry = |name: &str, n: usize| ParamMoments {
        name: name.to_string(),
        m: vec![0.5; n],
        v: vec![0.5; n],
    };
    let cases = [
        (vec![entry("a", 2)], "1 moment entries for 2 parameters"),
        (vec![entry("a", 2), entry("c", 1)], "\"c\""),
        (vec![entry("b", 1), entry("a", 2)], "\"b\""),
        (
            vec![entry("a", 3), entry("b", 1)],
            "parameter a of 2 values",
        ),
        (
            vec![
                entry("a", 2),
                ParamMoments {
                    v: vec![],
                    ..entry("b", 1)
                },
            ],
            "parameter b of 1 values",
        ),
        (
            vec![
                entry("a", 2),
                ParamMoments {
                    v: vec![-1.0],
                    ..entry("b", 1)
                },
            ],
            "negative moments for parameter b",
        ),
    ];
    for (moments, needle) in cases {
        let bad = AdamState { step: 7, moments };
        let msg = message(adam.load_state(bad).expect_err("a mismatched state"));
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
        assert!(msg.starts_with("invalid state"), "{msg:?}");
        assert_eq!(adam.state(), good, "refusal changed the state");
    }
    // The right shape loads.
    let ok = AdamState {
        step: 7,
        moments: vec![entry("a", 2), entry("b", 1)],
    };
    adam.load_state(ok.clone())?;
    assert_eq!(adam.state(), ok);
    Ok(())
}

#[test]
fn bad_configs_are_refused() -> Result<()> {
    let d = AdamConfig::default();
    let cases = [
        (AdamConfig { lr: 0.0, ..d }, "lr"),
        (AdamConfig { lr: -1e-3, ..d }, "lr"),
        (AdamConfig { lr: f64::NAN, ..d }, "lr"),
        (
            AdamConfig {
                lr: f64::INFINITY,
                ..d
            },
            "lr",
        ),
        (AdamConfig { beta1: 1.0, ..d }, "beta1"),
        (AdamConfig { beta1: -0.1, ..d }, "beta1"),
        (AdamConfig { beta2: 1.0, ..d }, "beta2"),
        (
            AdamConfig {
                beta2: f64::NAN,
                ..d
            },
            "beta2",
        ),
        (AdamConfig { eps: 0.0, ..d }, "eps"),
        (
            AdamConfig {
                eps: f64::INFINITY,
                ..d
            },
            "eps",
        ),
        (
            AdamConfig {
                weight_decay: WeightDecay::Coupled(-0.1),
                ..d
            },
            "weight_decay",
        ),
        (
            AdamConfig {
                weight_decay: WeightDecay::Decoupled(f64::NAN),
                ..d
            },
            "weight_decay",
        ),
        (
            AdamConfig {
                max_grad_norm: Some(0.0),
                ..d
            },
            "max_grad_norm",
        ),
        (
            AdamConfig {
                max_grad_norm: Some(f64::INFINITY),
                ..d
            },
            "max_grad_norm",
        ),
    ];
    let a = f64_var(&[1.0])?;
    for (config, name) in cases {
        let msg = message(config.check().expect_err("a bad config"));
        assert!(msg.starts_with(&format!("invalid {name}: ")), "{msg:?}");
        let msg = message(Adam::new(named(&[("a", &a)]), config).expect_err("a bad config"));
        assert!(msg.starts_with(&format!("invalid {name}: ")), "{msg:?}");
    }
    d.check()?;
    // Zero decay and β = 0 are allowed.
    AdamConfig {
        beta1: 0.0,
        weight_decay: WeightDecay::Decoupled(0.0),
        ..d
    }
    .check()?;

    let mut adam = Adam::new(named(&[("a", &a)]), d)?;
    let msg = message(adam.set_lr(0.0).expect_err("lr 0"));
    assert!(msg.starts_with("invalid lr: 0"), "{msg:?}");
    adam.set_lr(0.5)?;
    assert_eq!(adam.config().lr, 0.5);
    Ok(())
}

#[test]
fn bad_parameter_lists_are_refused() -> Result<()> {
    let (a, b) = (f64_var(&[1.0])?, f64_var(&[2.0])?);
    let d = AdamConfig::default();
    let dup = message(Adam::new(named(&[("x", &a), ("x", &b)]), d).expect_err("duplicate"));
    assert!(dup.contains("\"x\"") && dup.contains("unique"), "{dup:?}");
    let empty = message(Adam::new(named(&[("", &a)]), d).expect_err("empty name"));
    assert!(empty.contains("empty name"), "{empty:?}");
    let twice = message(Adam::new(named(&[("x", &a), ("y", &a)]), d).expect_err("same var"));
    assert!(twice.contains("\"y\""), "{twice:?}");
    let int = Var::zeros(2, DType::U32, &Device::Cpu)?;
    let msg = message(Adam::new(named(&[("counts", &int)]), d).expect_err("u32"));
    assert!(msg.contains("\"counts\"") && msg.contains("U32"), "{msg:?}");
    // No parameters at all is allowed (a step does nothing but count).
    let mut none = Adam::new(vec![], d)?;
    let stats = none.step(&Tensor::new(1.0f64, &Device::Cpu)?.backward()?)?;
    assert_eq!(stats.grad_norm, 0.0);
    Ok(())
}

#[test]
fn a_non_finite_gradient_is_refused_and_changes_nothing() -> Result<()> {
    let (a, b) = (f64_var(&[1.0, 2.0])?, f64_var(&[3.0, 4.0])?);
    let params = named(&[("drift.weight", &a), ("drift.params", &b)]);
    let mut adam = Adam::new(params, AdamConfig::default())?;
    adam.step(&linear_grads(&[&a, &b], &[&[1.0, 2.0], &[3.0, 4.0]])?)?;
    let (state, va, vb) = (adam.state(), values(&a)?, values(&b)?);
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        // a's gradient is fine and comes first: it must not be applied either.
        let grads = linear_grads(&[&a, &b], &[&[0.5, 0.5], &[1.0, bad]])?;
        let msg = message(adam.step(&grads).expect_err("a non-finite gradient"));
        assert_eq!(msg, "non-finite gradient of parameter drift.params");
        assert_eq!(adam.state(), state);
        assert_eq!(values(&a)?, va);
        assert_eq!(values(&b)?, vb);
    }
    Ok(())
}

#[test]
fn sorted_vars_sorts_by_name() -> Result<()> {
    let varmap = VarMap::new();
    let names = ["net.w2", "drift.b", "net.w10", "alpha", "net.b1", "drift.a"];
    for (i, name) in names.iter().enumerate() {
        varmap.get(i + 1, name, Init::Const(0.0), DType::F32, &Device::Cpu)?;
    }
    let vars = sorted_vars(&varmap);
    let got: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
    let mut want = names.to_vec();
    want.sort();
    assert_eq!(got, want);
    // The Vars are the VarMap's own (same storage), with their shapes.
    let alpha = &vars[0].1;
    assert_eq!(alpha.dims(), &[4]);
    Adam::new(vars, AdamConfig::default())?;
    Ok(())
}

#[test]
fn a_step_costs_microseconds() -> Result<()> {
    // Four f32 parameters totalling 20,736 values, like a 2-64-64-1 network scaled up.
    let shapes: [&[usize]; 4] = [&[128, 128], &[128], &[32, 128], &[32]];
    let params: Vec<(String, Var)> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| Ok((format!("p{i}"), Var::ones(*s, DType::F32, &Device::Cpu)?)))
        .collect::<Result<_>>()?;
    let mut loss = Tensor::new(0.0f32, &Device::Cpu)?;
    for (_, v) in &params {
        loss = (loss + v.as_tensor().sqr()?.sum_all()?)?;
    }
    let grads = loss.backward()?;
    let config = AdamConfig {
        weight_decay: WeightDecay::Decoupled(0.01),
        max_grad_norm: Some(1.0),
        ..AdamConfig::default()
    };
    let mut adam = Adam::new(params, config)?;
    let mut times = Vec::new();
    for _ in 0..21 {
        let start = Instant::now();
        adam.step(&grads)?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    // About 110 µs measured on the 2-core reference machine kind; 5 ms leaves room for a
    // loaded CI machine and still catches per-element candle ops (~20k ops at ≥ 1 µs each is
    // ≥ 20 ms) or per-step allocations of candle tensors per value.
    assert!(median < 5e-3, "median step {:.1} µs", median * 1e6);
    Ok(())
}
