//! Property tests over random valid and invalid parameters: the solvers and the Fokker–Planck
//! solver stay finite and conserve what they should on bounded problems, and invalid input
//! gives errors, never panics.

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use sde_core::fokker_planck::FokkerPlanck1d;
use sde_core::{FnField, OrnsteinUhlenbeck};
use sde_solvers::{OdeMethod, SdeMethod, TimeGrid};

const ODE_METHODS: [OdeMethod; 4] = [
    OdeMethod::Euler,
    OdeMethod::Heun,
    OdeMethod::Midpoint,
    OdeMethod::Rk4,
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// dx/dt = −a x contracts: every explicit method with a stable step (|a h| ≤ 1) keeps the
    /// state finite and never grows it; RK4 with 50+ steps is within 1e-6 of x₀ e^{−a}.
    #[test]
    fn ode_solvers_contract_on_a_stable_linear_problem(
        a in 0.0f64..5.0,
        x0 in prop::collection::vec(-10.0f64..10.0, 1..20),
        n_steps in 5usize..200,
        method in 0usize..4,
    ) {
        prop_assume!(a / n_steps as f64 <= 1.0);
        let field = FnField(move |x: &Vec<f64>, _t: f64| -> sde_core::Result<Vec<f64>> { Ok(x.iter().map(|v| -a * v).collect()) });
        let grid = TimeGrid::uniform(0.0, 1.0, n_steps).unwrap();
        let x1 = ODE_METHODS[method].solve(&field, x0.clone(), &grid, false).unwrap().into_last();
        for (a0, b) in x0.iter().zip(&x1) {
            prop_assert!(b.is_finite() && b.abs() <= a0.abs() * (1.0 + 1e-12));
        }
        if method == 3 && n_steps >= 50 {
            for (a0, b) in x0.iter().zip(&x1) {
                // RK4's global error is O((a h)⁴) ≤ (5/50)⁴/120 ≈ 1e-6 of |x₀| at a ≤ 5, n ≥ 50.
                prop_assert!((b - a0 * (-a).exp()).abs() <= 1e-6 * (1.0 + a0.abs()));
            }
        }
    }

    /// Euler–Maruyama on an OU process from a bounded start stays finite, forward and in
    /// reverse time.
    #[test]
    fn euler_maruyama_stays_finite_on_ou(
        theta in 0.0f64..5.0,
        sigma in 0.0f64..3.0,
        x0 in prop::collection::vec(-10.0f64..10.0, 1..50),
        n_steps in 1usize..300,
        reverse in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let ou = OrnsteinUhlenbeck::new(theta, sigma).unwrap();
        let grid = if reverse { TimeGrid::uniform(1.0, 0.0, n_steps) } else { TimeGrid::uniform(0.0, 1.0, n_steps) }.unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let x1 = SdeMethod::EulerMaruyama.solve(&ou, x0, &grid, &mut rng, false);
        // Reverse time runs the same SDE backwards; with θ h ≤ 2 it cannot blow up.
        if theta / n_steps as f64 <= 1.0 {
            let x1 = x1.unwrap().into_last();
            prop_assert!(x1.iter().all(|v| v.is_finite()));
        }
    }

    /// The Fokker–Planck solver conserves mass (zero-flux walls) and keeps the density
    /// finite and non-negative for an OU process well inside the domain.
    #[test]
    fn fokker_planck_conserves_mass(
        theta in 0.1f64..3.0,
        sigma in 0.1f64..1.5,
        mean in -1.0f64..1.0,
        n_cells in 50usize..300,
        t in 0.05f64..1.0,
    ) {
        let ou = OrnsteinUhlenbeck::new(theta, sigma).unwrap();
        let fp = FokkerPlanck1d::new(-8.0, 8.0, n_cells).unwrap();
        let p0 = fp.project(|x| (-(x - mean).powi(2) / 0.5).exp() / (0.5 * std::f64::consts::PI).sqrt());
        let m0 = fp.mass(&p0).unwrap();
        let p = fp.solve(&ou, &p0, 0.0, &[t]).unwrap().remove(0);
        prop_assert!(p.iter().all(|v| v.is_finite() && *v >= -1e-12));
        // The finite-volume scheme with zero-flux walls conserves mass up to rounding of sums
        // over ≤ 300 cells and ~10³ time steps: 1e-9 leaves room above 1e-16 × 3·10⁵.
        prop_assert!((fp.mass(&p).unwrap() - m0).abs() < 1e-9 * m0.max(1.0));
    }

    /// Any endpoints and step counts give a grid or an error naming a parameter, never a
    /// panic; a grid that is returned is strictly monotone and ends exactly at t1.
    #[test]
    fn any_grid_arguments_give_a_valid_grid_or_an_error(
        t0 in prop_oneof![any::<f64>(), -1e3f64..1e3],
        t1 in prop_oneof![any::<f64>(), -1e3f64..1e3],
        n in prop_oneof![0usize..2000, Just(usize::MAX)],
    ) {
        match TimeGrid::uniform(t0, t1, n) {
            Ok(g) => {
                let p = g.points();
                prop_assert_eq!(p.len(), n + 1);
                prop_assert_eq!(p[n], t1);
                let up = t1 > t0;
                let monotone = p.windows(2).all(|w| if up { w[1] > w[0] } else { w[1] < w[0] });
                prop_assert!(monotone);
            }
            Err(e) => {
                let m = e.to_string();
                prop_assert!(m.starts_with("invalid "), "{}", m);
            }
        }
    }

    /// Any domain and cell count give a solver or a named error, never a panic.
    #[test]
    fn any_fokker_planck_domain_gives_a_solver_or_an_error(
        x_min in prop_oneof![any::<f64>(), -1e3f64..1e3],
        x_max in prop_oneof![any::<f64>(), -1e3f64..1e3],
        n in prop_oneof![0usize..5000, Just(usize::MAX)],
    ) {
        match FokkerPlanck1d::new(x_min, x_max, n) {
            Ok(fp) => {
                let increasing = fp.centres().windows(2).all(|w| w[1] > w[0]);
                prop_assert!(fp.dx() > 0.0 && increasing);
            }
            Err(e) => prop_assert!(e.to_string().starts_with("invalid "), "{}", e),
        }
    }

    /// Non-finite entries anywhere in the start are errors that name the entry.
    #[test]
    fn a_non_finite_start_is_located(
        mut x0 in prop::collection::vec(-10.0f64..10.0, 1..30),
        at in any::<prop::sample::Index>(),
        bad in prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)],
    ) {
        let i = at.index(x0.len());
        x0[i] = bad;
        let ou = OrnsteinUhlenbeck::new(1.0, 1.0).unwrap();
        let grid = TimeGrid::uniform(0.0, 1.0, 10).unwrap();
        let e = SdeMethod::EulerMaruyama
            .solve(&ou, x0, &grid, &mut StdRng::seed_from_u64(0), false)
            .unwrap_err()
            .to_string();
        let needle = format!("entry {i}");
        prop_assert!(e.contains(&needle), "{}", e);
    }

    /// Any list of points, including empty ones, duplicates and non-finite values, gives a
    /// strictly monotone grid or a named error.
    #[test]
    fn any_point_list_gives_a_monotone_grid_or_an_error(
        points in prop::collection::vec(prop_oneof![-3.0f64..3.0, Just(0.5), Just(f64::NAN), Just(f64::INFINITY)], 0..12),
    ) {
        match TimeGrid::from_points(points.clone()) {
            Ok(g) => {
                let p = g.points();
                let up = p[1] > p[0];
                let monotone = p.windows(2).all(|w| if up { w[1] > w[0] } else { w[1] < w[0] });
                prop_assert!(monotone && p.len() >= 2);
            }
            Err(e) => prop_assert!(e.to_string().starts_with("invalid "), "{}", e),
        }
    }
}

#[test]
fn zero_width_domains_and_intervals_are_errors() {
    for x in [0.0, -7.5, 1e300] {
        assert!(FokkerPlanck1d::new(x, x, 10)
            .unwrap_err()
            .to_string()
            .contains("x_max"));
        assert!(TimeGrid::uniform(x, x, 10)
            .unwrap_err()
            .to_string()
            .contains("t1"));
    }
}
