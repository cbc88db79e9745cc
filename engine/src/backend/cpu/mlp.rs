//! The gated MLP's activation: `silu(gate) · up`, HF's `act_fn(gate_proj(x))
//! * up_proj(x)` with `hidden_act = "silu"`.

/// `gate_up` holds rows of `[gate (width) | up (width)]` (the stacked
/// projection's output); returns rows of `width`.
pub fn silu_mul(gate_up: &[f32], width: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(gate_up.len() / 2);
    for row in gate_up.chunks_exact(2 * width) {
        let (gate, up) = row.split_at(width);
        out.extend(
            gate.iter()
                .zip(up)
                .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_times_up() {
        let y = silu_mul(&[0.0, 2.0, 5.0, 3.0], 2);
        assert_eq!(y[0], 0.0);
        let silu2 = 2.0 / (1.0 + (-2.0f32).exp());
        assert!((y[1] - silu2 * 3.0).abs() < 1e-6);
    }
}
