//! Unifies third-party features across the workspace (see tools/workspace_hack.py): every
//! member depends on this crate, so `cargo xtask`, `cargo test -p <crate>` and
//! `cargo test --workspace --all-features` build each dependency once, with one feature set.
//! It has no code.
