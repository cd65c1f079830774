//! The learning-rate schedule shared by `cargo xtask train` and QAT.

/// Linear warm-up over the first `warmup` steps to `peak`, then cosine decay to 0 at `total`.
pub fn cosine_with_warmup(step: usize, total: usize, warmup: usize, peak: f64) -> f64 {
    let warmup = warmup.max(1);
    if step < warmup {
        peak * (step + 1) as f64 / warmup as f64
    } else {
        let t = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
        peak * 0.5 * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
    }
}

/// The warm-up length both trainers use: 5 % of the steps, at least one.
pub fn default_warmup(total: usize) -> usize {
    (total / 20).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let total = 100;
        let lr = |s| cosine_with_warmup(s, total, default_warmup(total), 1.0);
        assert!(lr(0) < lr(4));
        assert!((lr(5) - 1.0).abs() < 1e-12);
        assert!(lr(50) < 1.0 && lr(50) > 0.0);
        assert!(lr(total - 1) < 1e-3);
    }
}
