//! Tests of the quantizer math: one binary so that burn is linked once.

mod common;
mod device;
mod log;
mod observer;
mod uniform;
