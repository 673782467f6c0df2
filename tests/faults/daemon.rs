//! Faults of the daemon and its control plane: requests it must refuse, state files it must keep
//! private, descendants it must not lose.
