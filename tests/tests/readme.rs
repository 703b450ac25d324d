//! The README's library example, kept compiling and running.

use rand::{rngs::StdRng, SeedableRng};
use sde_core::{GaussianMarginals, OrnsteinUhlenbeck, ProbabilityFlow, ReverseTimeSde};
use sde_solvers::{OdeMethod, SdeMethod, TimeGrid};

#[test]
fn readme_example() -> Result<(), Box<dyn std::error::Error>> {
    let ou = OrnsteinUhlenbeck::new(1.0, 0.5)?; // dx = −x dt + 0.5 dW
    let marginals = GaussianMarginals::new(ou, 2.0, 0.1)?; // started from N(2, 0.1): exact p_t
    let mut rng = StdRng::seed_from_u64(0); // every draw comes from your RNG

    // Forward SDE, 10,000 paths.
    let x0 = marginals.at(0.0)?.sample(&mut rng, 10_000);
    let grid = TimeGrid::uniform(0.0, 1.0, 200)?;
    let x1 = SdeMethod::EulerMaruyama
        .solve(&ou, x0.clone(), &grid, &mut rng, false)?
        .into_last();

    // The same marginals deterministically: the probability-flow ODE.
    let flow = ProbabilityFlow::new(ou, marginals);
    let y1 = OdeMethod::Rk4.solve(&flow, x0, &grid, false)?.into_last();

    // And back again: the reverse-time SDE on a decreasing grid.
    let back = ReverseTimeSde::new(ou, marginals);
    let x0_again = SdeMethod::EulerMaruyama
        .solve(
            &back,
            x1.clone(),
            &TimeGrid::uniform(1.0, 0.0, 200)?,
            &mut rng,
            false,
        )?
        .into_last();

    // Means agree with the exact ones within Monte-Carlo error (SE ≈ 0.003) plus EM bias.
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let m1 = marginals.at(1.0)?.mean();
    assert!((mean(&x1) - m1).abs() < 0.02);
    assert!((mean(&y1) - m1).abs() < 0.02);
    assert!((mean(&x0_again) - 2.0).abs() < 0.03);
    Ok(())
}
