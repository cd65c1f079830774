//! Records how this crate is compiled, so benchmarks can say which build they measure.
fn main() {
    // Cargo names the dev profile `debug` here (and bench/release `release`).
    let profile = match std::env::var("PROFILE").as_deref() {
        Ok("release") => "release",
        _ => "dev",
    };
    println!("cargo:rustc-env=MIXQ_BUILD_PROFILE={profile}");
    let opt = std::env::var("OPT_LEVEL").unwrap_or_default();
    println!("cargo:rustc-env=MIXQ_BUILD_OPT_LEVEL={opt}");
}
