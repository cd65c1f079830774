//! Shared helpers of the vit-models integration tests.
#![allow(dead_code, unused_imports)]

pub use mixq_vit_models::testing::{
    FIXTURES, fixture, fixture_arch, fixtures_dir as fixtures, max_abs_diff,
    read_f32 as read_tensor, tensor,
};
