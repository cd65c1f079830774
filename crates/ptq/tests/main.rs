//! All integration tests of this crate in one binary: one link instead of one per file
//! (linking burn into each test binary was a large part of the cold build).

mod conv_stem;
mod ptq;
mod sweep;
