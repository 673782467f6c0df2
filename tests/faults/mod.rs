//! The fault suite (issue 11): what production limits, hostile clients and a bad day can do, one
//! test per fault, each bounded in time and load, on loopback only. Every test here failed on the
//! code before its fix.

mod daemon;
mod drain;
mod hostile;
mod limits;
mod logs;
mod state;
