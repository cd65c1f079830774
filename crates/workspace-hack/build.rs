//! Present only so that cargo honours the crate's [build-dependencies], which pin the features
//! of build-script and proc-macro dependencies.
fn main() {}
