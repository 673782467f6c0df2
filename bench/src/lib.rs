//! Load generation and measurement shared by the benchmark command and the end-to-end tests.

pub mod load;
