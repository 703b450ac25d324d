//! Tests of `sde_variational::fused`: the fused `(v, ∂v/∂x)` kernel against the unfused
//! candle path (`Mlp::forward_with_tangents`), its hand-written backward pass against candle's
//! autograd through that path and against central finite differences, and the fast `tanh`.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use common::{rel_err, values};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sde_variational::fused::{
    fast_tanh, pack_params, parallel, set_parallel, supports_fused, value_and_dx, MlpValueDx,
    PARALLEL_MIN_BATCH,
};
use sde_variational::mlp::{with_time, Activation, Mlp, MlpConfig, Time};
use sde_variational::Result;

/// Shapes covering one hidden layer, two and three hidden layers, odd widths (GEMM edge
/// tiles, vector-loop remainders) and the reference network.
const WIDTHS: [&[usize]; 4] = [
    &[2, 5, 1],
    &[2, 7, 13, 1],
    &[2, 9, 6, 11, 1],
    &[2, 64, 64, 1],
];

fn mlp(widths: &[usize], dtype: DType, seed: u64) -> Result<(Mlp, VarMap)> {
    let varmap = VarMap::new();
    let mut rng = StdRng::seed_from_u64(seed);
    let config = MlpConfig::new(widths.to_vec(), Activation::Identity);
    let net = Mlp::new(&config, &varmap, "v", dtype, &Device::Cpu, &mut rng)?;
    Ok((net, varmap))
}

/// A `(rows, cols)` tensor uniform in `±scale`, drawn in `f64` on the host.
fn uniform(rows: usize, cols: usize, scale: f64, dtype: DType, rng: &mut StdRng) -> Result<Tensor> {
    let values: Vec<f64> = (0..rows * cols)
        .map(|_| rng.random_range(-scale..scale))
        .collect();
    Ok(Tensor::from_vec(values, (rows, cols), &Device::Cpu)?.to_dtype(dtype)?)
}

/// The unfused reference `(v, ∂v/∂x)` for the state `xs` (column 0 is `x`).
fn unfused(net: &Mlp, xs: &Tensor, t: f64) -> Result<(Tensor, Tensor)> {
    let x = xs.narrow(1, 0, 1)?;
    let (v, dv) = net.forward_with_tangents(&with_time(&x, Time::Scalar(t))?, &[0])?;
    Ok((v, dv[0].clone()))
}

/// Forward tolerance. Both paths evaluate the same formulas with the same `tanh` (the f32
/// `Mlp` uses the same rational approximation), differing only in summation order: a few ulp
/// per layer, times the condition of sums of terms of both signs. f32 ulp 1.2e-7, f64 2.2e-16.
fn forward_tol(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-12,
        _ => 1e-5,
    }
}

#[test]
fn forward_matches_unfused_path() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(1);
    for dtype in [DType::F32, DType::F64] {
        for (s, widths) in WIDTHS.iter().enumerate() {
            let (net, _vars) = mlp(widths, dtype, 10 + s as u64)?;
            assert!(supports_fused(&net));
            let params = pack_params(&net)?;
            // Inputs up to ±3 (the data's scale) saturate some units; the second column is
            // junk that must be ignored (the CNF's log-density accumulator).
            let xs = uniform(37, 2, 3.0, dtype, &mut rng)?;
            let t = 0.37;
            let out = value_and_dx(&net, &xs, &params, t)?;
            assert_eq!(out.dims(), &[37, 2]);
            let (v, dv) = unfused(&net, &xs, t)?;
            let tol = forward_tol(dtype);
            let ev = rel_err(&out.narrow(1, 0, 1)?, &v)?;
            let ed = rel_err(&out.narrow(1, 1, 1)?, &dv)?;
            assert!(ev <= tol, "{dtype:?} {widths:?}: value rel err {ev:e}");
            assert!(ed <= tol, "{dtype:?} {widths:?}: ∂v/∂x rel err {ed:e}");
            // A one-column state and a non-contiguous view give the same result.
            let x1 = xs.narrow(1, 0, 1)?.contiguous()?;
            let out1 = value_and_dx(&net, &x1, &params, t)?;
            assert_eq!(values(&out1)?, values(&out)?);
            let strided = xs.t()?.contiguous()?.t()?;
            assert!(!strided.is_contiguous());
            let out2 = value_and_dx(&net, &strided, &params, t)?;
            assert_eq!(values(&out2)?, values(&out)?);
        }
    }
    Ok(())
}

/// `Σ w₁ v + w₂ ∂v/∂x` with fixed random weights, so both output columns get distinct,
/// non-trivial gradients.
fn weighted_loss(v: &Tensor, dv: &Tensor, w1: &Tensor, w2: &Tensor) -> Result<Tensor> {
    Ok((v.mul(w1)? + dv.mul(w2)?)?.sum_all()?)
}

/// Backward tolerance: the hand-written backward pass and candle's autograd sum the same
/// terms in different orders. f64 stays near 1e-14; f32 accumulates ~1e-6 relative per
/// reduction over 2·batch terms of mixed sign, kept well inside 1e-4.
fn backward_tol(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-10,
        _ => 1e-4,
    }
}

#[test]
fn gradients_match_autograd_through_unfused_path() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(2);
    for dtype in [DType::F32, DType::F64] {
        for (s, widths) in WIDTHS.iter().enumerate() {
            let (net, _vars) = mlp(widths, dtype, 20 + s as u64)?;
            let batch = 29;
            let xs = Var::from_tensor(&uniform(batch, 2, 3.0, dtype, &mut rng)?)?;
            let w1 = uniform(batch, 1, 1.0, dtype, &mut rng)?;
            let w2 = uniform(batch, 1, 1.0, dtype, &mut rng)?;
            let t = 0.81;

            let (v, dv) = unfused(&net, xs.as_tensor(), t)?;
            let reference = weighted_loss(&v, &dv, &w1, &w2)?.backward()?;

            let params = pack_params(&net)?;
            let out = value_and_dx(&net, xs.as_tensor(), &params, t)?;
            let loss = weighted_loss(&out.narrow(1, 0, 1)?, &out.narrow(1, 1, 1)?, &w1, &w2)?;
            let fused = loss.backward()?;

            let tol = backward_tol(dtype);
            let mut pairs = vec![("xs".to_string(), xs.as_tensor().clone())];
            for i in 0..net.n_layers() {
                pairs.push((format!("W{}", i + 1), net.weight(i).unwrap().clone()));
                pairs.push((format!("b{}", i + 1), net.bias(i).unwrap().clone()));
            }
            for (name, param) in &pairs {
                let (Some(got), Some(want)) = (fused.get(param), reference.get(param)) else {
                    panic!("{dtype:?} {widths:?}: no gradient for {name}");
                };
                let err = rel_err(got, want)?;
                assert!(
                    err <= tol,
                    "{dtype:?} {widths:?}: ∂/∂{name} rel err {err:e}"
                );
            }
            // Column 1 of the state does not enter the field.
            let gx = fused.get(xs.as_tensor()).unwrap();
            assert!(values(&gx.narrow(1, 1, 1)?)?.iter().all(|&g| g == 0.0));
        }
    }
    Ok(())
}

#[test]
fn gradients_without_tape_and_on_second_backward_agree() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(3);
    let (net, _vars) = mlp(&[2, 7, 13, 1], DType::F64, 30)?;
    let xs = Var::from_tensor(&uniform(17, 1, 2.0, DType::F64, &mut rng)?)?;
    let params = Var::from_tensor(&pack_params(&net)?.detach())?;
    let w = uniform(17, 2, 1.0, DType::F64, &mut rng)?;
    let grads = |keep: bool| -> Result<[Vec<f64>; 4]> {
        let op = MlpValueDx::new(&[7, 13], 0.4)?.keep_tape(keep);
        let loss = xs
            .as_tensor()
            .apply_op2(params.as_tensor(), op)?
            .mul(&w)?
            .sum_all()?;
        // The first backward pass uses the tape if kept, the second always recomputes.
        let first = loss.backward()?;
        let second = loss.backward()?;
        Ok([
            values(first.get(xs.as_tensor()).unwrap())?,
            values(first.get(params.as_tensor()).unwrap())?,
            values(second.get(xs.as_tensor()).unwrap())?,
            values(second.get(params.as_tensor()).unwrap())?,
        ])
    };
    let (kept, recomputed) = (grads(true)?, grads(false)?);
    // The same operations in the same order: bit-identical.
    assert_eq!(kept, recomputed);
    assert_eq!(kept[0], kept[2]);
    assert_eq!(kept[1], kept[3]);
    Ok(())
}

#[test]
fn large_batches_split_over_two_threads_agree_with_one() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(7);
    let (net, _vars) = mlp(&[2, 64, 64, 1], DType::F64, 70)?;
    // Odd, so the two blocks differ in size.
    let batch = 2 * PARALLEL_MIN_BATCH + 13;
    let xs = Var::from_tensor(&uniform(batch, 2, 3.0, DType::F64, &mut rng)?)?;
    let w = uniform(batch, 2, 1.0, DType::F64, &mut rng)?;
    let run = |two: bool| -> Result<[Tensor; 3]> {
        // Forces the split even on a one-core machine (the helper thread then shares it).
        set_parallel(two);
        let params = pack_params(&net)?;
        let out = value_and_dx(&net, xs.as_tensor(), &params, 0.6)?;
        let grads = out.mul(&w)?.sum_all()?.backward()?;
        Ok([
            out,
            grads.get(xs.as_tensor()).unwrap().clone(),
            grads.get(net.weight(1).unwrap()).unwrap().clone(),
        ])
    };
    let before = parallel();
    let (split, single) = (run(true)?, run(false)?);
    set_parallel(before);
    // Rows are independent; only the parameter gradient is summed over the two blocks in
    // another order: rounding-level differences in f64.
    for (a, b) in split.iter().zip(&single) {
        let err = rel_err(a, b)?;
        assert!(err <= 1e-13, "split vs single thread: rel err {err:e}");
    }
    // And both agree with the unfused path.
    let (v, dv) = unfused(&net, xs.as_tensor(), 0.6)?;
    assert!(rel_err(&split[0].narrow(1, 0, 1)?, &v)? <= forward_tol(DType::F64));
    assert!(rel_err(&split[0].narrow(1, 1, 1)?, &dv)? <= forward_tol(DType::F64));
    Ok(())
}

#[test]
fn gradients_match_central_differences() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(4);
    let hidden = [6, 5];
    let (net, _vars) = mlp(&[2, 6, 5, 1], DType::F64, 40)?;
    let batch = 11;
    let t = 0.23;
    let x0: Vec<f64> = (0..batch).map(|_| rng.random_range(-2.5..2.5)).collect();
    let p0 = values(&pack_params(&net)?)?;
    let w: Vec<f64> = (0..2 * batch)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let w_t = Tensor::from_vec(w.clone(), (batch, 2), &Device::Cpu)?;
    let loss = |x: &[f64], p: &[f64]| -> Result<f64> {
        let xs = Tensor::from_vec(x.to_vec(), (batch, 1), &Device::Cpu)?;
        let ps = Tensor::from_vec(p.to_vec(), p.len(), &Device::Cpu)?;
        let out = xs.apply_op2_no_bwd(&ps, &MlpValueDx::new(&hidden, t)?)?;
        Ok(out.mul(&w_t)?.sum_all()?.to_scalar::<f64>()?)
    };
    let xs = Var::from_vec(x0.clone(), (batch, 1), &Device::Cpu)?;
    let ps = Var::from_vec(p0.clone(), p0.len(), &Device::Cpu)?;
    let out = value_and_dx(&net, xs.as_tensor(), ps.as_tensor(), t)?;
    let grads = out.mul(&w_t)?.sum_all()?.backward()?;
    let gx = values(grads.get(xs.as_tensor()).unwrap())?;
    let gp = values(grads.get(ps.as_tensor()).unwrap())?;
    // Central differences err by h² f'''/6 + ε|f|/h: with h = 1e-5 about 1e-10 + 1e-11 for
    // these unit-scale functions, far inside 1e-7.
    let h = 1e-5;
    let tol = 1e-7;
    for i in 0..batch {
        let (mut up, mut down) = (x0.clone(), x0.clone());
        up[i] += h;
        down[i] -= h;
        let fd = (loss(&up, &p0)? - loss(&down, &p0)?) / (2.0 * h);
        assert!(
            (fd - gx[i]).abs() <= tol * (1.0 + fd.abs()),
            "x[{i}]: fd {fd} vs {}",
            gx[i]
        );
    }
    for j in 0..p0.len() {
        let (mut up, mut down) = (p0.clone(), p0.clone());
        up[j] += h;
        down[j] -= h;
        let fd = (loss(&x0, &up)? - loss(&x0, &down)?) / (2.0 * h);
        assert!(
            (fd - gp[j]).abs() <= tol * (1.0 + fd.abs()),
            "p[{j}]: fd {fd} vs {}",
            gp[j]
        );
    }
    Ok(())
}

#[test]
fn fast_tanh_is_accurate_odd_and_bounded() {
    // Every 2⁻¹⁷ ≈ 7.6e-6 over [−20, 20] (5.2 million points) plus tiny and huge arguments.
    let step = 1.0 / 131_072.0;
    let n = (20.0 / step) as i64;
    let mut max_err = 0.0f64;
    let mut max_rel = 0.0f64;
    let mut worst = 0.0f32;
    let extra = [
        1e-38f32,
        1e-20,
        3.9e-4,
        4e-4,
        4.1e-4,
        7.9,
        7.91,
        1e30,
        f32::INFINITY,
    ];
    let grid = (-n..=n).map(|i| (i as f64 * step) as f32);
    for x in grid.chain(extra).chain(extra.map(|x| -x)) {
        let got = fast_tanh(x);
        let err = (got as f64 - (x as f64).tanh()).abs();
        if x != 0.0 && x.is_finite() {
            max_rel = max_rel.max(err / (x as f64).tanh().abs());
        }
        if err > max_err {
            max_err = err;
            worst = x;
        }
        assert!(got.abs() <= 1.0, "|tanh({x})| = {got} > 1");
        assert_eq!(fast_tanh(-x), -got, "odd at {x}");
    }
    // f32 itself resolves tanh near ±1 only to 3e-8 (half an ulp below 1); the kernel's few
    // roundings leave about 3 ulp (measured 1.5e-7 absolute, 1.9e-7 relative). Eigen's rational
    // approximation would fail the absolute bound (4.3e-7 near |x| = 6).
    assert!(
        max_err <= 2e-7,
        "max |fast_tanh − tanh| = {max_err:e} at {worst}"
    );
    assert!(max_rel <= 3e-7, "max relative error {max_rel:e}");
    assert!(fast_tanh(f32::NAN).is_nan());
}

#[test]
fn rejects_what_it_cannot_evaluate() -> Result<()> {
    let varmap = VarMap::new();
    let mut rng = StdRng::seed_from_u64(5);
    let softplus = MlpConfig::new(vec![2, 4, 1], Activation::Softplus);
    let net = Mlp::new(&softplus, &varmap, "s", DType::F32, &Device::Cpu, &mut rng)?;
    assert!(!supports_fused(&net));
    let (net, _vars) = mlp(&[2, 4, 1], DType::F32, 6)?;
    let params = pack_params(&net)?;
    let xs = Tensor::zeros((3, 2), DType::F32, &Device::Cpu)?;
    assert!(value_and_dx(&net, &xs, &params.narrow(0, 0, 5)?, 0.0).is_err());
    assert!(value_and_dx(&net, &xs.to_dtype(DType::F64)?, &params, 0.0).is_err());
    assert!(MlpValueDx::new(&[], 0.0).is_err());
    let bf16 = xs.to_dtype(DType::BF16)?;
    let p16 = params.to_dtype(DType::BF16)?;
    assert!(bf16
        .apply_op2_no_bwd(&p16, &MlpValueDx::new(&[4], 0.0)?)
        .is_err());
    Ok(())
}
