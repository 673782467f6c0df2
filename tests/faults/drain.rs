//! Faults of a reload under load: the keep-alive close race and a draining instance's answers.
