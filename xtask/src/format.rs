//! The one formatting module: how numbers, changes and p-values read in
//! every table (terminal, Markdown, store listings).

/// A measured value: 4 significant-ish digits, scientific beyond a million.
pub fn value(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{v:.4e}")
    } else if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// An optional value; "–" when absent.
pub fn opt_value(v: Option<f64>) -> String {
    v.map(value).unwrap_or_else(|| "–".into())
}

/// A signed relative change; beyond +900% as a factor ("×35").
pub fn signed(v: f64) -> String {
    if v >= 9.0 {
        format!("×{:.0}", v + 1.0)
    } else {
        format!("{:+.1}%", v * 100.0)
    }
}

/// An optional signed change; "–" when absent.
pub fn pct(v: Option<f64>) -> String {
    v.map(signed).unwrap_or_else(|| "–".into())
}

/// An unsigned relative size for people: "12.3%", or "×15" when huge.
pub fn magnitude(relative: f64) -> String {
    if relative >= 9.0 {
        format!("×{:.0}", relative + 1.0)
    } else {
        format!("{:.1}%", relative * 100.0)
    }
}

/// A p-value: three decimals, "<0.001" below.
pub fn p_value(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v < 0.001 => "<0.001".into(),
        Some(v) => format!("{v:.3}"),
    }
}

/// A coefficient of variation as a percentage.
pub fn cv(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

/// Environment variables as a shell would set them: `K=V K=V`, by name.
pub fn env_assignments(vars: &std::collections::BTreeMap<String, String>) -> String {
    let list: Vec<String> = vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
    list.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_renderings() {
        assert_eq!(value(72850.4), "72850");
        assert_eq!(value(123.45), "123.5");
        assert_eq!(value(0.6071), "0.6071");
        assert_eq!(value(2.5e9), "2.5000e9");
        assert_eq!(opt_value(None), "–");
        assert_eq!(signed(0.027), "+2.7%");
        assert_eq!(signed(34.0), "×35");
        assert_eq!(magnitude(0.123), "12.3%");
        assert_eq!(p_value(Some(0.0004)), "<0.001");
        assert_eq!(p_value(Some(0.0333)), "0.033");
    }
}
