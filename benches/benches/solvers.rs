//! Solver throughput: the bare normal generator, Euler–Maruyama (slice fast path and tensor
//! path) on an Ornstein–Uhlenbeck process, and Euler/RK4 on a linear ODE. See the crate docs
//! of `sde-benches` for what each group measures; `SDE_BENCH_QUICK=1` selects the short suite.
//!
//! Every benchmark reports `Throughput::Elements` (paths × steps, or normals) so Criterion
//! prints elements/s; `cargo xtask bench` turns these into `target/bench/summary.md`.

use std::hint::black_box;

use candle_core::DType;
use criterion::{criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use sde_benches::{ou, rng, single_threaded, x0_tensor, x0_vec, Decay, Sizes, NORMAL_BUFFER};
use sde_core::noise::NormalFill;
use sde_core::Real;
use sde_solvers::pointwise::euler_maruyama_in_place;
use sde_solvers::{OdeMethod, SdeMethod};

/// The bare generator on a reused L1-sized buffer: the floor under an Euler–Maruyama step.
fn normals(c: &mut Criterion) {
    single_threaded();
    let sizes = Sizes::from_env();
    let mut group = c.benchmark_group("normals");
    group.throughput(Throughput::Elements(NORMAL_BUFFER as u64));
    group.warm_up_time(sizes.warm_up_time());
    group.measurement_time(sizes.measurement_time());
    fn one<T: NormalFill + Real>(
        group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        name: &str,
    ) {
        let mut r = rng();
        let mut buf = vec![T::ZERO; NORMAL_BUFFER];
        group.bench_function(BenchmarkId::new(name, NORMAL_BUFFER), |b| {
            b.iter(|| {
                T::fill_standard_normal(&mut r, black_box(&mut buf[..]));
                black_box(&buf);
            })
        });
    }
    one::<f32>(&mut group, "f32");
    one::<f64>(&mut group, "f64");
    group.finish();
}

/// A group of long-running solver benchmarks: 10 samples with flat sampling (the same number
/// of iterations in every sample, one for the full suite), as Criterion advises for
/// iterations of 0.1–1 s.
fn solver_group<'a>(
    c: &'a mut Criterion,
    name: &str,
    sizes: &Sizes,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(sizes.warm_up_time());
    group.measurement_time(sizes.measurement_time());
    group.throughput(Throughput::Elements(sizes.path_steps()));
    group
}

/// Euler–Maruyama through the in-place slice fast path.
fn em_slice(c: &mut Criterion) {
    single_threaded();
    let sizes = Sizes::from_env();
    let (ou, grid) = (ou(), sizes.grid());
    let mut group = solver_group(c, "em_slice", &sizes);
    fn one<T: Real>(
        group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        name: &str,
        sizes: &Sizes,
        ou: &sde_core::OrnsteinUhlenbeck,
        grid: &sde_solvers::TimeGrid,
    ) {
        let mut r = rng();
        // The state keeps evolving from one iteration to the next: OU is stationary, so every
        // iteration does the same work, and no re-initialisation pass is timed.
        let mut xs = x0_vec::<T>(sizes.n_paths);
        group.bench_function(BenchmarkId::new(name, sizes.label()), |b| {
            b.iter(|| {
                euler_maruyama_in_place(ou, black_box(&mut xs[..]), grid, &mut r)
                    .expect("OU stays finite");
                black_box(&xs);
            })
        });
    }
    one::<f32>(&mut group, "f32", &sizes, &ou, &grid);
    one::<f64>(&mut group, "f64", &sizes, &ou, &grid);
    group.finish();
}

/// Euler–Maruyama through the generic solver on `(paths, 1)` CPU tensors.
fn em_tensor(c: &mut Criterion) {
    single_threaded();
    let sizes = Sizes::from_env();
    let (ou, grid) = (ou(), sizes.grid());
    let mut group = solver_group(c, "em_tensor", &sizes);
    for (name, dtype) in [("f32", DType::F32), ("f64", DType::F64)] {
        let mut r = rng();
        let x0 = x0_tensor(sizes.n_paths, dtype);
        group.bench_function(BenchmarkId::new(name, sizes.label()), |b| {
            b.iter(|| {
                let sol = SdeMethod::EulerMaruyama
                    .solve(&ou, black_box(x0.clone()), &grid, &mut r, false)
                    .expect("OU stays finite");
                black_box(sol.into_last())
            })
        });
    }
    group.finish();
}

/// Euler and RK4 on `dx/dt = −x`, with `Vec` and tensor states.
fn ode(c: &mut Criterion) {
    single_threaded();
    let sizes = Sizes::from_env();
    let grid = sizes.grid();
    let field = Decay::default();
    for (method, method_name) in [(OdeMethod::Euler, "euler"), (OdeMethod::Rk4, "rk4")] {
        let mut group = solver_group(c, &format!("ode_{method_name}_vec"), &sizes);
        let x32 = x0_vec::<f32>(sizes.n_paths);
        group.bench_function(BenchmarkId::new("f32", sizes.label()), |b| {
            b.iter(|| {
                let sol = method
                    .solve(&field, black_box(x32.clone()), &grid, false)
                    .expect("decay stays finite");
                black_box(sol.into_last())
            })
        });
        let x64 = x0_vec::<f64>(sizes.n_paths);
        group.bench_function(BenchmarkId::new("f64", sizes.label()), |b| {
            b.iter(|| {
                let sol = method
                    .solve(&field, black_box(x64.clone()), &grid, false)
                    .expect("decay stays finite");
                black_box(sol.into_last())
            })
        });
        group.finish();

        let mut group = solver_group(c, &format!("ode_{method_name}_tensor"), &sizes);
        for (name, dtype) in [("f32", DType::F32), ("f64", DType::F64)] {
            let x0 = x0_tensor(sizes.n_paths, dtype);
            group.bench_function(BenchmarkId::new(name, sizes.label()), |b| {
                b.iter(|| {
                    let sol = method
                        .solve(&field, black_box(x0.clone()), &grid, false)
                        .expect("decay stays finite");
                    black_box(sol.into_last())
                })
            });
        }
        group.finish();
    }
}

/// The Criterion entry point, in a private module: the macro's `pub fn` carries no docs.
mod entry {
    criterion::criterion_group!(
        benches,
        super::normals,
        super::em_slice,
        super::em_tensor,
        super::ode
    );
}
criterion_main!(entry::benches);
