//! Helpers shared by this crate's integration tests.

#![allow(dead_code)] // each test file uses some of the helpers

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use sde_variational::{Activation, Mlp, MlpConfig, NetworkGaussian, NeuralSde, Result};

/// Serialises the tests of one binary that set the engine's process-wide two-thread switch
/// (`engine::set_parallel`) or compare two evaluations bit for bit: tests run concurrently, and
/// one test's switch would otherwise change another's split between the two runs it compares.
pub fn parallel_switch() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The entries of `t` as `f64`s.
pub fn values(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?)
}

/// `max |a − b| / max |b|`: the relative error in the max norm. Entry-wise relative errors
/// would blow up where a derivative happens to cross zero.
pub fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (a, b) = (values(a)?, values(b)?);
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    Ok(diff / scale)
}

/// A `(n, 1)` f64 column.
pub fn column(v: &[f64]) -> Result<Tensor> {
    Ok(Tensor::from_slice(v, (v.len(), 1), &Device::Cpu)?)
}

/// A `(n, 1)` f64 column of one value.
pub fn filled(v: f64, n: usize) -> Result<Tensor> {
    Ok(Tensor::full(v, (n, 1), &Device::Cpu)?)
}

/// `n` standard normals as a column.
pub fn normals(rng: &mut StdRng, n: usize) -> Result<Tensor> {
    let v: Vec<f64> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
    column(&v)
}

/// Sample mean and variance.
pub fn moments_of(x: &Tensor) -> Result<(f64, f64)> {
    let v = values(x)?;
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    Ok((m, var))
}

/// A seeded f64 tanh network of the given widths and output.
pub fn net(widths: Vec<usize>, output: Activation, name: &str, rng: &mut StdRng) -> Result<Mlp> {
    Mlp::new(
        &MlpConfig::new(widths, output),
        &VarMap::new(),
        name,
        DType::F64,
        &Device::Cpu,
        rng,
    )
}

/// A random 2-16-16-1 neural SDE (drift, softplus diffusion), detached.
pub fn random_sde(seed: u64) -> Result<NeuralSde> {
    let mut rng = StdRng::seed_from_u64(seed);
    let drift = net(vec![2, 16, 16, 1], Activation::Identity, "drift", &mut rng)?;
    let sigma = net(vec![2, 16, 16, 1], Activation::Softplus, "sigma", &mut rng)?;
    NeuralSde::new(drift, sigma)?.detached()
}

/// A random `NetworkGaussian` with 2-16-16-1 networks and `β₁ = beta1`, detached.
pub fn random_process(seed: u64, beta1: f64) -> Result<NetworkGaussian> {
    let mut rng = StdRng::seed_from_u64(seed);
    let a = net(vec![2, 16, 16, 1], Activation::Identity, "a", &mut rng)?;
    let b = net(vec![2, 16, 16, 1], Activation::Softplus, "b", &mut rng)?;
    let log_beta1 = NetworkGaussian::log_beta1_var(beta1, DType::F64, &Device::Cpu)?;
    NetworkGaussian::new(a, b, log_beta1.as_tensor().clone())?.detached()
}
