//! Tests of `sde_variational::engine::solve`, the whole Runge–Kutta solve of an engine field as
//! one op: its end state against the generic solver over one fused evaluation per stage
//! (bit for bit), its gradients against candle's autograd through that generic path and
//! against central finite differences, for every method, both time directions, the CNF's
//! augmented field and a plain velocity, `f32` and `f64`, one thread and two.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{rel_err, values};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sde_core::VectorField;
use sde_solvers::{OdeMethod, TimeGrid};
use sde_variational::engine::{evaluate, set_parallel, solve};
use sde_variational::mlp::{Activation, Mlp, MlpConfig, Time};
use sde_variational::{Error, Result};

const METHODS: [OdeMethod; 4] = [
    OdeMethod::Euler,
    OdeMethod::Heun,
    OdeMethod::Midpoint,
    OdeMethod::Rk4,
];

/// One fused evaluation per stage: what `engine::solve` replaces.
struct PerEval<'a> {
    net: &'a Mlp,
    dirs: &'a [usize],
}

impl VectorField<Tensor> for PerEval<'_> {
    fn velocity(&self, s: &Tensor, t: f64) -> sde_core::Result<Tensor> {
        evaluate(self.net, s, Time::Scalar(t), self.dirs)
            .map_err(|e| sde_core::Error::Field(Box::new(e)))
    }
}

/// The CNF's augmented field (2-16-16-1 network, tangent in x; state [x, a]) and a plain
/// velocity on R² (3-9-7-2 network, no tangent; state x).
const FIELDS: [(&[usize], &[usize]); 2] = [(&[2, 16, 16, 1], &[0]), (&[3, 9, 7, 2], &[])];

fn field(widths: &[usize], dtype: DType, seed: u64) -> Result<Mlp> {
    let config = MlpConfig::new(widths.to_vec(), Activation::Identity);
    let vars = candle_nn::VarMap::new();
    let mut rng = StdRng::seed_from_u64(seed);
    Mlp::new(&config, &vars, "v", dtype, &Device::Cpu, &mut rng)
}

fn start(batch: usize, width: usize, dtype: DType, seed: u64) -> Result<Var> {
    let mut rng = StdRng::seed_from_u64(seed);
    let v: Vec<f64> = (0..batch * width)
        .map(|i| {
            if width == 2 && i % 2 == 1 && seed % 2 == 0 {
                0.0 // the CNF starts its divergence integral at 0
            } else {
                rng.random_range(-2.5..2.5)
            }
        })
        .collect();
    Ok(Var::from_tensor(
        &Tensor::from_vec(v, (batch, width), &Device::Cpu)?.to_dtype(dtype)?,
    )?)
}

/// The end state and the gradients of `Σ w ⊙ end` for `(params, start)`.
fn run(
    net: &Mlp,
    s0: &Var,
    dirs: &[usize],
    method: OdeMethod,
    grid: &TimeGrid,
    fused: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let end = if fused {
        solve(net, s0.as_tensor(), dirs, method, grid)?
    } else {
        let field = PerEval { net, dirs };
        method
            .solve(&field, s0.as_tensor().clone(), grid, false)?
            .into_last()
    };
    let w = weights(end.dims2()?, end.dtype())?;
    let grads = (&end * &w)?.sum_all()?.backward()?;
    let get = |v: &Tensor| {
        grads
            .get(v)
            .cloned()
            .ok_or(Error::invalid("grad", "", "missing"))
    };
    Ok((end.clone(), get(net.params())?, get(s0.as_tensor())?))
}

/// Fixed weights of the linear functional differentiated in these tests.
fn weights((b, s): (usize, usize), dtype: DType) -> Result<Tensor> {
    let w: Vec<f64> = (0..b * s)
        .map(|i| ((i * 7 % 11) as f64 - 5.0) / 5.0)
        .collect();
    Ok(Tensor::from_vec(w, (b, s), &Device::Cpu)?.to_dtype(dtype)?)
}

#[test]
fn end_state_is_bit_identical_and_gradients_equal_the_generic_solver() -> Result<()> {
    for dtype in [DType::F64, DType::F32] {
        for (fi, &(widths, dirs)) in FIELDS.iter().enumerate() {
            for (mi, &method) in METHODS.iter().enumerate() {
                // 9 rows on one thread, 101 split over two; backwards (as the CNF likelihood
                // runs) and forwards (as sampling runs) on uneven grids.
                for (batch, grid) in [
                    (9, TimeGrid::uniform(1.0, 0.0, 13)?),
                    (
                        101,
                        TimeGrid::from_points(vec![0.0, 0.1, 0.35, 0.5, 0.9, 1.0])?,
                    ),
                ] {
                    let net = field(widths, dtype, 3 + fi as u64)?;
                    let width = net.out_dim() * (1 + dirs.len());
                    let s0 = start(batch, width, dtype, mi as u64)?;
                    let (ea, pa, sa) = run(&net, &s0, dirs, method, &grid, true)?;
                    let (eb, pb, sb) = run(&net, &s0, dirs, method, &grid, false)?;
                    let case = format!("{dtype:?} field {fi} {method:?} batch {batch}");
                    // The same operations in the same order: the same bits.
                    assert_eq!(values(&ea)?, values(&eb)?, "{case}: end state");
                    // The gradients sum the evaluations' contributions in another order.
                    let tol = if dtype == DType::F64 { 1e-12 } else { 2e-5 };
                    for (name, a, b) in [("params", &pa, &pb), ("start", &sa, &sb)] {
                        let e = rel_err(a, b)?;
                        assert!(e <= tol, "{case}: ∂/∂{name} off by {e:e}");
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn gradients_match_finite_differences() -> Result<()> {
    // f64, RK4 backwards over 20 steps, the augmented field; central differences with step
    // 1e-6 have error ~1e-10 here.
    let net = field(&[2, 16, 16, 1], DType::F64, 7)?;
    let s0 = start(60, 2, DType::F64, 4)?;
    let grid = TimeGrid::uniform(1.0, 0.0, 20)?;
    let (_, gp, gs) = run(&net, &s0, &[0], OdeMethod::Rk4, &grid, true)?;
    let w = weights((60, 2), DType::F64)?;
    let objective = |net: &Mlp, s0: &Tensor| -> Result<f64> {
        let end = solve(net, s0, &[0], OdeMethod::Rk4, &grid)?;
        Ok((end * &w)?.sum_all()?.to_scalar::<f64>()?)
    };
    let h = 1e-6;
    let params = values(net.params())?;
    let gp = values(&gp)?;
    for i in [0, 5, 17, 40, 100, 200, params.len() - 1] {
        let shifted = |d: f64| -> Result<f64> {
            let mut p = params.clone();
            p[i] += d;
            let flat = Tensor::from_vec(p, params.len(), &Device::Cpu)?;
            objective(&Mlp::from_flat(net.config(), flat)?, s0.as_tensor())
        };
        let fd = (shifted(h)? - shifted(-h)?) / (2.0 * h);
        assert!(
            (fd - gp[i]).abs() <= 1e-6 * (1.0 + fd.abs()),
            "param {i}: {fd} vs {}",
            gp[i]
        );
    }
    let x0 = values(s0.as_tensor())?;
    let gs = values(&gs)?;
    for i in [0, 1, 2, 31, 64, 119] {
        let shifted = |d: f64| -> Result<f64> {
            let mut x = x0.clone();
            x[i] += d;
            objective(&net, &Tensor::from_vec(x, (60, 2), &Device::Cpu)?)
        };
        let fd = (shifted(h)? - shifted(-h)?) / (2.0 * h);
        assert!(
            (fd - gs[i]).abs() <= 1e-6 * (1.0 + fd.abs()),
            "start {i}: {fd} vs {}",
            gs[i]
        );
    }
    Ok(())
}

#[test]
fn one_thread_or_two_and_a_second_backward_agree() -> Result<()> {
    let net = field(&[2, 16, 16, 1], DType::F32, 9)?;
    let s0 = start(125, 2, DType::F32, 2)?;
    let grid = TimeGrid::uniform(1.0, 0.0, 30)?;
    let w = weights((125, 2), DType::F32)?;
    let mut ends = Vec::new();
    let mut grads = Vec::new();
    for parallel in [true, false] {
        set_parallel(parallel);
        let end = solve(&net, s0.as_tensor(), &[0], OdeMethod::Midpoint, &grid)?;
        let loss = (&end * &w)?.sum_all()?;
        // The first backward pass uses the kept tapes, the second recomputes them.
        for _ in 0..2 {
            let g = loss.backward()?;
            grads.push(values(g.get(net.params()).expect("params gradient"))?);
        }
        ends.push(values(&end)?);
    }
    set_parallel(true);
    // Rows never interact: the end state does not depend on the split.
    assert_eq!(ends[0], ends[1]);
    // The gradients sum the blocks' contributions in another order on one thread and on two
    // (recomputed tapes hold the same values as kept ones): f32 rounding of those sums, a few
    // ulp of the largest partial sum.
    for g in &grads[1..] {
        let scale = grads[0].iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let diff = g
            .iter()
            .zip(&grads[0])
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff <= 1e-5 * scale, "gradients differ by {diff:e}");
    }
    Ok(())
}

#[test]
fn bad_inputs_are_named() -> Result<()> {
    let net = field(&[2, 16, 16, 1], DType::F64, 1)?;
    let grid = TimeGrid::uniform(0.0, 1.0, 4)?;
    let zeros = |cols: usize, dtype: DType| Tensor::zeros((3, cols), dtype, &Device::Cpu);
    let nan = Tensor::new(&[[0.0f64, 0.0], [f64::NAN, 0.0]], &Device::Cpu)?;
    // (start, directions, what the message must name). The augmented field's state has two
    // columns.
    let cases: [(Tensor, &[usize], [&str; 2]); 4] = [
        (zeros(1, DType::F64)?, &[0], ["start", "[3, 1]"]),
        (zeros(2, DType::F64)?, &[2], ["dirs", "2 for input width 2"]),
        (zeros(2, DType::F32)?, &[0], ["start", "F32"]),
        (nan, &[0], ["non-finite", "entry 2"]),
    ];
    for (start, dirs, words) in cases {
        let e = solve(&net, &start, dirs, OdeMethod::Rk4, &grid)
            .expect_err("must fail")
            .to_string();
        assert!(words.iter().all(|w| e.contains(w)), "{e}");
    }
    Ok(())
}
