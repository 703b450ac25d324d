//! Tests of `sde_variational::engine`: every output and every gradient of the fused op against
//! the generic candle path (`Mlp::forward_with_tangents`, differentiated by candle's autograd)
//! and against central finite differences — identity and softplus outputs, no, one and several
//! tangents, `d = 1` and `d = 2` inputs, scalar and per-row time, `f32` and `f64`, batches on
//! one thread and split over two.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use common::{rel_err, values};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sde_variational::engine::{
    evaluate, evaluate_group, set_parallel, supports, value_and_tangents, PARALLEL_MIN_BATCH,
};
use sde_variational::mlp::{with_time, Activation, Mlp, MlpConfig, Time};
use sde_variational::{Error, Result};

/// One case: widths (input `[x…, t]`), output activation, tangent directions.
struct Case {
    widths: &'static [usize],
    output: Activation,
    dirs: &'static [usize],
}

/// d = 1 and d = 2 inputs, one to three hidden layers, odd widths (GEMM edge tiles, vector-loop
/// remainders), one and two outputs; no tangent, ∂/∂x, ∂/∂t, several.
const CASES: &[Case] = &[
    Case {
        widths: &[2, 64, 64, 1],
        output: Activation::Identity,
        dirs: &[],
    },
    Case {
        widths: &[2, 64, 64, 1],
        output: Activation::Identity,
        dirs: &[0],
    },
    Case {
        widths: &[2, 64, 64, 1],
        output: Activation::Softplus,
        dirs: &[0],
    },
    Case {
        widths: &[2, 7, 13, 1],
        output: Activation::Identity,
        dirs: &[1],
    },
    Case {
        widths: &[2, 7, 13, 1],
        output: Activation::Softplus,
        dirs: &[0, 1],
    },
    Case {
        widths: &[2, 5, 1],
        output: Activation::Softplus,
        dirs: &[1],
    },
    Case {
        widths: &[3, 9, 6, 11, 2],
        output: Activation::Identity,
        dirs: &[0, 1, 2],
    },
    Case {
        widths: &[3, 9, 6, 2],
        output: Activation::Softplus,
        dirs: &[2, 0],
    },
    Case {
        widths: &[3, 8, 8, 2],
        output: Activation::Softplus,
        dirs: &[],
    },
];

fn mlp(case: &Case, dtype: DType, seed: u64) -> Result<Mlp> {
    let varmap = VarMap::new();
    let mut rng = StdRng::seed_from_u64(seed);
    let config = MlpConfig::new(case.widths.to_vec(), case.output);
    Mlp::new(&config, &varmap, "net", dtype, &Device::Cpu, &mut rng)
}

/// A `(rows, cols)` tensor uniform in `[lo, hi)`, drawn in `f64` on the host.
fn uniform(
    rows: usize,
    cols: usize,
    lo: f64,
    hi: f64,
    dtype: DType,
    rng: &mut StdRng,
) -> Result<Tensor> {
    let v: Vec<f64> = (0..rows * cols).map(|_| rng.random_range(lo..hi)).collect();
    Ok(Tensor::from_vec(v, (rows, cols), &Device::Cpu)?.to_dtype(dtype)?)
}

/// The engine's and the generic path's `[value, tangents…]`, and the gradients of one random
/// linear functional of them with respect to `(params, x, t)`.
struct Evaluated {
    outputs: Vec<Tensor>,
    grads: [Tensor; 3],
}

fn run(
    net: &Mlp,
    x: &Var,
    t: &Var,
    dirs: &[usize],
    weights: &[Tensor],
    fused: bool,
) -> Result<Evaluated> {
    let (value, tangents) = if fused {
        value_and_tangents(net, x.as_tensor(), Time::PerSample(t.as_tensor()), dirs)?
    } else {
        let rows = with_time(x.as_tensor(), Time::PerSample(t.as_tensor()))?;
        net.forward_with_tangents(&rows, dirs)?
    };
    let outputs: Vec<Tensor> = std::iter::once(value).chain(tangents).collect();
    let mut loss = Tensor::zeros((), net.dtype(), &Device::Cpu)?;
    for (o, w) in outputs.iter().zip(weights) {
        loss = (loss + (o * w)?.sum_all()?)?;
    }
    let grads = loss.backward()?;
    let get =
        |v: &Tensor| -> Result<Tensor> { Ok(grads.get(v).cloned().unwrap_or(v.zeros_like()?)) };
    Ok(Evaluated {
        grads: [get(net.params())?, get(x.as_tensor())?, get(t.as_tensor())?],
        outputs,
    })
}

/// Tolerance against the generic path (the acceptance figures): both compute the same
/// formulas with the same tanh and softplus, differing in summation order only — a few ulp per
/// layer, amplified by sums of terms of both signs. f64 ulp 2.2e-16, f32 1.2e-7.
fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-10,
        _ => 1e-4,
    }
}

#[test]
fn engine_equals_the_generic_path_outputs_and_gradients() -> Result<()> {
    for dtype in [DType::F64, DType::F32] {
        for (ci, case) in CASES.iter().enumerate() {
            // 9 rows run on one thread, 101 are split over two.
            for batch in [9, 101] {
                let net = mlp(case, dtype, 10 + ci as u64)?;
                let mut rng = StdRng::seed_from_u64(ci as u64);
                let n_x = case.widths[0] - 1;
                let x = Var::from_tensor(&uniform(batch, n_x, -3.0, 3.0, dtype, &mut rng)?)?;
                let t = Var::from_tensor(&uniform(batch, 1, 0.0, 1.0, dtype, &mut rng)?)?;
                let n_out = case.widths[case.widths.len() - 1];
                let weights: Vec<Tensor> = (0..=case.dirs.len())
                    .map(|_| uniform(batch, n_out, -1.0, 1.0, dtype, &mut rng))
                    .collect::<Result<_>>()?;
                let fused = run(&net, &x, &t, case.dirs, &weights, true)?;
                let generic = run(&net, &x, &t, case.dirs, &weights, false)?;
                for (k, (a, b)) in fused.outputs.iter().zip(&generic.outputs).enumerate() {
                    let e = rel_err(a, b)?;
                    assert!(
                        e <= tol(dtype),
                        "{dtype:?} case {ci} batch {batch} output {k}: {e:e}"
                    );
                }
                for (name, (a, b)) in ["params", "x", "t"]
                    .iter()
                    .zip(fused.grads.iter().zip(&generic.grads))
                {
                    let e = rel_err(a, b)?;
                    assert!(
                        e <= tol(dtype),
                        "{dtype:?} case {ci} batch {batch} ∂/∂{name}: {e:e}"
                    );
                }
            }
        }
    }
    Ok(())
}

#[test]
fn scalar_time_equals_a_constant_time_column() -> Result<()> {
    let _switch = common::parallel_switch();
    for dtype in [DType::F64, DType::F32] {
        let case = &CASES[4];
        let net = mlp(case, dtype, 3)?;
        let mut rng = StdRng::seed_from_u64(3);
        let x = Var::from_tensor(&uniform(60, 1, -3.0, 3.0, dtype, &mut rng)?)?;
        let tcol = Tensor::full(0.37f64, (60, 1), &Device::Cpu)?.to_dtype(dtype)?;
        let a = evaluate(&net, x.as_tensor(), Time::Scalar(0.37), case.dirs)?;
        let b = evaluate(&net, x.as_tensor(), Time::PerSample(&tcol), case.dirs)?;
        // The same numbers reach the same kernel in the same order: bit-identical.
        assert_eq!(values(&a)?, values(&b)?);
        let ga = a.sum_all()?.backward()?;
        let gb = b.sum_all()?.backward()?;
        for v in [net.params(), x.as_tensor()] {
            assert_eq!(values(ga.get(v).unwrap())?, values(gb.get(v).unwrap())?);
        }
    }
    Ok(())
}

/// `(f(θ + h e_i) − f(θ − h e_i)) / 2h` for one entry of a flat `Var`.
fn fd_entry(var: &Var, i: usize, h: f64, f: &dyn Fn() -> Result<f64>) -> Result<f64> {
    let base = values(var.as_tensor())?;
    let set = |v: f64| -> Result<()> {
        let mut w = base.clone();
        w[i] = v;
        var.set(&Tensor::from_vec(w, var.as_tensor().dims(), &Device::Cpu)?)?;
        Ok(())
    };
    set(base[i] + h)?;
    let plus = f()?;
    set(base[i] - h)?;
    let minus = f()?;
    set(base[i])?;
    Ok((plus - minus) / (2.0 * h))
}

#[test]
fn tangents_and_gradients_match_finite_differences() -> Result<()> {
    // f64, h = 1e-5: central differences err by h² f'''/6 + ε|f|/h ≈ 1e-10 + 1e-11 for these
    // unit-scale networks, far inside the 1e-6 asserted.
    let h = 1e-5;
    for (ci, case) in CASES.iter().enumerate() {
        let config = MlpConfig::new(case.widths.to_vec(), case.output);
        let varmap = VarMap::new();
        let built = Mlp::new(
            &config,
            &varmap,
            "net",
            DType::F64,
            &Device::Cpu,
            &mut StdRng::seed_from_u64(ci as u64),
        )?;
        let params = Var::from_tensor(built.params())?;
        let net = Mlp::from_flat(&config, params.as_tensor().clone())?;
        let mut rng = StdRng::seed_from_u64(100 + ci as u64);
        let batch = 53; // split over two threads
        let n_x = case.widths[0] - 1;
        let n_out = case.widths[case.widths.len() - 1];
        let x = Var::from_tensor(&uniform(batch, n_x, -2.0, 2.0, DType::F64, &mut rng)?)?;
        let t = Var::from_tensor(&uniform(batch, 1, 0.0, 1.0, DType::F64, &mut rng)?)?;

        // Tangents: ∂y/∂input_d against differences of the value in that input.
        let (_, tangents) = value_and_tangents(
            &net,
            x.as_tensor(),
            Time::PerSample(t.as_tensor()),
            case.dirs,
        )?;
        for (k, &d) in case.dirs.iter().enumerate() {
            let shift = |s: f64| -> Result<Tensor> {
                let (xs, ts) = if d == n_x {
                    (x.as_tensor().clone(), (t.as_tensor() + s)?)
                } else {
                    let mut e = vec![0.0; batch * n_x];
                    e.iter_mut().skip(d).step_by(n_x).for_each(|v| *v = s);
                    (
                        (x.as_tensor() + Tensor::from_vec(e, (batch, n_x), &Device::Cpu)?)?,
                        t.as_tensor().clone(),
                    )
                };
                Ok(value_and_tangents(&net, &xs, Time::PerSample(&ts), &[])?.0)
            };
            let fd = ((shift(h)? - shift(-h)?)? / (2.0 * h))?;
            let e = rel_err(&tangents[k], &fd)?;
            assert!(e < 1e-6, "case {ci} tangent {d}: {e:e}");
        }

        // Gradients of L = Σ w ⊙ [y, tangents…] with respect to params, x and t.
        let weights = uniform(
            batch,
            (1 + case.dirs.len()) * n_out,
            -1.0,
            1.0,
            DType::F64,
            &mut rng,
        )?;
        let loss = || -> Result<f64> {
            let out = evaluate(
                &net,
                x.as_tensor(),
                Time::PerSample(t.as_tensor()),
                case.dirs,
            )?;
            Ok((out * &weights)?.sum_all()?.to_scalar::<f64>()?)
        };
        let out = evaluate(
            &net,
            x.as_tensor(),
            Time::PerSample(t.as_tensor()),
            case.dirs,
        )?;
        let grads = (out * &weights)?.sum_all()?.backward()?;
        let n_p = values(params.as_tensor())?.len();
        let checks: [(&str, &Var, Vec<usize>); 3] = [
            // First-layer weights (x and t columns), a bias, a deep weight, the output bias.
            (
                "params",
                &params,
                vec![0, 1, case.widths[0] * case.widths[1], n_p / 2, n_p - 1],
            ),
            ("x", &x, vec![0, batch * n_x / 2, batch * n_x - 1]),
            ("t", &t, vec![0, batch - 1]),
        ];
        for (name, var, idx) in checks {
            let g = values(grads.get(var.as_tensor()).expect("tracked"))?;
            for i in idx {
                let fd = fd_entry(var, i, h, &loss)?;
                assert!(
                    (g[i] - fd).abs() <= 1e-6 * fd.abs().max(1e-2),
                    "case {ci} ∂L/∂{name}[{i}]: backprop {} vs FD {fd}",
                    g[i]
                );
            }
        }
    }
    Ok(())
}

#[test]
fn two_threads_and_one_agree_and_repeat_bit_identically() -> Result<()> {
    let _switch = common::parallel_switch();
    let case = &CASES[2];
    let net = mlp(case, DType::F32, 5)?;
    let mut rng = StdRng::seed_from_u64(5);
    let batch = 4 * PARALLEL_MIN_BATCH;
    let x = Var::from_tensor(&uniform(batch, 1, -3.0, 3.0, DType::F32, &mut rng)?)?;
    let t = uniform(batch, 1, 0.0, 1.0, DType::F32, &mut rng)?;
    let grads = |parallel: bool| -> Result<(Vec<f64>, Vec<f64>)> {
        set_parallel(parallel);
        let out = evaluate(&net, x.as_tensor(), Time::PerSample(&t), case.dirs)?;
        let g = out.sqr()?.sum_all()?.backward()?;
        set_parallel(true);
        Ok((
            values(&out)?,
            values(g.get(net.params()).expect("tracked"))?,
        ))
    };
    let (o1, g1) = grads(false)?;
    let (o2, g2) = grads(true)?;
    let (o3, g3) = grads(true)?;
    // Rows are independent: outputs are identical; only the order of one sum of the parameter
    // gradient differs (f32: a few ulp of the largest partial sum).
    assert_eq!(o1, o2);
    let scale = g1.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (a, b) in g1.iter().zip(&g2) {
        assert!((a - b).abs() <= 1e-5 * scale, "{a} vs {b}");
    }
    assert_eq!((o2, g2), (o3, g3), "same inputs, same bits");
    Ok(())
}

#[test]
fn a_second_backward_pass_recomputes_and_agrees() -> Result<()> {
    let _switch = common::parallel_switch();
    // The first backward pass consumes the tape; the second must recompute, not reuse it.
    let case = &CASES[4];
    let net = mlp(case, DType::F64, 8)?;
    let mut rng = StdRng::seed_from_u64(8);
    let x = uniform(70, 1, -2.0, 2.0, DType::F64, &mut rng)?;
    let t = uniform(70, 1, 0.0, 1.0, DType::F64, &mut rng)?;
    let loss = evaluate(&net, &x, Time::PerSample(&t), case.dirs)?
        .sqr()?
        .sum_all()?;
    let g1 = values(loss.backward()?.get(net.params()).expect("tracked"))?;
    // The recomputation follows the forward pass's split even if the switch changed since.
    set_parallel(false);
    let g2 = values(loss.backward()?.get(net.params()).expect("tracked"))?;
    set_parallel(true);
    assert_eq!(g1, g2);
    // A detached network builds no graph and keeps no tape.
    let out = evaluate(&net.detached()?, &x, Time::PerSample(&t), case.dirs)?;
    assert!(!out.track_op());
    Ok(())
}

#[test]
fn bad_inputs_are_errors_naming_the_parameter() -> Result<()> {
    let net = mlp(&CASES[1], DType::F32, 1)?;
    assert!(supports(&net));
    let x = Tensor::zeros((5, 1), DType::F32, &Device::Cpu)?;
    let expect = |r: Result<Tensor>, name: &str| match r {
        Err(Error::InvalidParameter { name: n, .. }) => assert_eq!(n, name),
        other => panic!("expected invalid {name}, got {other:?}"),
    };
    expect(evaluate(&net, &x, Time::Scalar(0.5), &[2]), "dirs");
    expect(
        evaluate(&net, &x.flatten_all()?, Time::Scalar(0.5), &[0]),
        "xs",
    );
    expect(
        evaluate(&net, &x.to_dtype(DType::F64)?, Time::Scalar(0.5), &[0]),
        "xs",
    );
    expect(evaluate(&net, &x, Time::Scalar(f64::NAN), &[0]), "t");
    let t4 = Tensor::zeros((4, 1), DType::F32, &Device::Cpu)?;
    expect(evaluate(&net, &x, Time::PerSample(&t4), &[0]), "t");
    // A network without a hidden layer is not the engine's: evaluate refuses, while
    // value_and_tangents falls back to the generic path.
    let linear = Mlp::new(
        &MlpConfig::new(vec![2, 1], Activation::Identity),
        &VarMap::new(),
        "l",
        DType::F32,
        &Device::Cpu,
        &mut StdRng::seed_from_u64(0),
    )?;
    assert!(!supports(&linear));
    expect(evaluate(&linear, &x, Time::Scalar(0.5), &[0]), "mlp");
    let (v, d) = value_and_tangents(&linear, &x, Time::Scalar(0.5), &[0])?;
    assert_eq!((v.dims(), d[0].dims()), (&[5, 1][..], &[5, 1][..]));
    Ok(())
}

#[test]
fn a_group_equals_its_networks_evaluated_one_by_one() -> Result<()> {
    let _switch = common::parallel_switch();
    // Two and three networks with different outputs and tangents, at per-row and scalar
    // times, on one thread and two (where the second thread takes whole networks, or the
    // rows of one network past the cost's half): the group's columns are the networks'
    // outputs bit for bit, and every gradient agrees with the separate evaluations.
    let varmap = VarMap::new();
    let mut rng = StdRng::seed_from_u64(21);
    let mut net = |widths: Vec<usize>, out, name: &str| {
        Mlp::new(
            &MlpConfig::new(widths, out),
            &varmap,
            name,
            DType::F64,
            &Device::Cpu,
            &mut rng,
        )
    };
    let f = net(vec![2, 9, 7, 1], Activation::Identity, "f")?;
    let s = net(vec![2, 8, 8, 1], Activation::Softplus, "s")?;
    let v = net(vec![2, 6, 2], Activation::Identity, "v")?;
    let groups: [&[(&Mlp, &[usize])]; 3] = [
        &[(&f, &[]), (&s, &[0])],
        &[(&f, &[1]), (&s, &[1])],
        &[(&s, &[0, 1]), (&f, &[]), (&v, &[1])],
    ];
    for batch in [3, 2 * PARALLEL_MIN_BATCH + 1] {
        let x = Var::from_tensor(&uniform(batch, 2, -2.0, 2.0, DType::F64, &mut rng)?)?;
        let t = Var::from_tensor(&uniform(batch, 1, 0.0, 1.0, DType::F64, &mut rng)?)?;
        for group in groups {
            for parallel in [false, true] {
                set_parallel(parallel);
                for time in [Time::PerSample(t.as_tensor()), Time::Scalar(0.3)] {
                    let together = evaluate_group(group, x.as_tensor(), time)?;
                    let apart = group
                        .iter()
                        .map(|&(n, d)| evaluate(n, x.as_tensor(), time, d))
                        .collect::<Result<Vec<_>>>()?;
                    let apart = Tensor::cat(&apart, 1)?;
                    assert_eq!(values(&together)?, values(&apart)?);
                    let weights = uniform(batch, apart.dim(1)?, -1.0, 1.0, DType::F64, &mut rng)?;
                    let g1 = (together * &weights)?.sum_all()?.backward()?;
                    let g2 = (apart * &weights)?.sum_all()?.backward()?;
                    let mut tracked: Vec<&Tensor> = group.iter().map(|(n, _)| n.params()).collect();
                    tracked.push(x.as_tensor());
                    if matches!(time, Time::PerSample(_)) {
                        tracked.push(t.as_tensor());
                    }
                    // Only the order of the parameter-gradient sums differs where a network's
                    // rows are split differently: f64 rounding, measured ≤ 2.8e-15.
                    for v in tracked {
                        let (a, b) = (
                            g1.get(v).expect("a gradient"),
                            g2.get(v).expect("a gradient"),
                        );
                        assert!(rel_err(a, b)? < 1e-13, "batch {batch}, parallel {parallel}");
                    }
                }
            }
        }
    }
    set_parallel(true);
    Ok(())
}

#[test]
fn a_group_rejects_networks_that_do_not_share_inputs() -> Result<()> {
    let mk = |widths: Vec<usize>, dtype| {
        Mlp::new(
            &MlpConfig::new(widths, Activation::Identity),
            &VarMap::new(),
            "n",
            dtype,
            &Device::Cpu,
            &mut StdRng::seed_from_u64(3),
        )
    };
    let (two, three) = (
        mk(vec![2, 4, 1], DType::F32)?,
        mk(vec![3, 4, 1], DType::F32)?,
    );
    let two64 = mk(vec![2, 4, 1], DType::F64)?;
    let x = Tensor::zeros((5, 2), DType::F32, &Device::Cpu)?;
    let names = |r: Result<Tensor>| match r {
        Err(Error::InvalidParameter { name, .. }) => name,
        other => panic!("expected an error, got {other:?}"),
    };
    assert_eq!(names(evaluate_group(&[], &x, Time::Scalar(0.0))), "nets");
    assert_eq!(
        names(evaluate_group(
            &[(&two, &[]), (&three, &[])],
            &x,
            Time::Scalar(0.0)
        )),
        "nets"
    );
    assert_eq!(
        names(evaluate_group(
            &[(&two, &[]), (&two64, &[])],
            &x,
            Time::Scalar(0.0)
        )),
        "nets"
    );
    assert_eq!(
        names(evaluate_group(
            &[(&two, &[]), (&two, &[2])],
            &x,
            Time::Scalar(0.0)
        )),
        "dirs"
    );
    Ok(())
}
