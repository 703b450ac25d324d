//! The result of a fixed-grid integration.

use crate::grid::TimeGrid;

/// States of an integration: every grid point when recorded, else only the last.
#[derive(Debug, Clone)]
pub struct Solution<S> {
    times: Vec<f64>,
    states: Vec<S>,
}

impl<S> Solution<S> {
    pub(crate) fn new(grid: &TimeGrid, states: Vec<S>, recorded: bool) -> Self {
        let times = if recorded {
            grid.points().to_vec()
        } else {
            vec![grid.end()]
        };
        debug_assert_eq!(times.len(), states.len());
        Self { times, states }
    }
    /// The times at which states were kept.
    pub fn times(&self) -> &[f64] {
        &self.times
    }
    /// The kept states, one per entry of [`Solution::times`].
    pub fn states(&self) -> &[S] {
        &self.states
    }
    /// The state at the end of the grid.
    pub fn last(&self) -> &S {
        // Invariant: a solution always holds at least the final state.
        &self.states[self.states.len() - 1]
    }
    /// Consumes the solution, returning the final state.
    pub fn into_last(mut self) -> S {
        // Invariant: a solution always holds at least the final state.
        self.states.pop().expect("a solution holds its final state")
    }
}
