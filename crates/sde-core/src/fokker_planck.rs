//! A mass-conserving finite-volume Fokker–Planck solver in one dimension (in progress).
