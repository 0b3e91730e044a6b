//! Helpers shared by the end-to-end tests (each test binary uses a part of them).
#![allow(dead_code)]

pub mod dev;
pub mod model;
pub mod net;
pub mod netns;

pub use bitorch_test_support::http::{free_port, rpc};
