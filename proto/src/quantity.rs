//! Quantities: memory sizes (`256Mi`, `2Gi`, `512M`, bytes) and CPU counts (`0.5`, `500m`).
//!
//! Memory units follow Kubernetes: decimal `k`, `M`, `G`, `T`, `P`, `E` (powers of 1000) and
//! binary `Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei` (powers of 1024); no unit means bytes. Fractions are
//! allowed with a unit (`1.5Gi`) and rounded up to a whole byte. Units that mean different things
//! in Docker and Kubernetes (`m`, `K`, `g`, `b`...) are refused with a hint instead of guessed.

use crate::spec::Quantity;

/// Most CPUs a container may be given.
pub const MAX_CPUS: f64 = 1024.0;

const MEMORY_HELP: &str =
    "expected bytes or a number with a unit such as 256Mi, 2Gi, 512M or 1024k";

/// Parses a memory size into bytes: a whole number of bytes, or text such as `256Mi`, `1G`.
pub fn parse_memory(q: &Quantity) -> Result<u64, String> {
    match q {
        Quantity::Number(n) => number_bytes(*n),
        Quantity::Text(s) => text_bytes(s),
    }
}

fn number_bytes(n: f64) -> Result<u64, String> {
    if !n.is_finite() {
        return Err(format!("memory size {n} is not a number; {MEMORY_HELP}"));
    }
    if n < 0.0 {
        return Err(format!("memory size {n} is negative"));
    }
    if n.fract() != 0.0 {
        return Err(format!(
            "memory size {n} is not a whole number of bytes; {MEMORY_HELP}"
        ));
    }
    // 2^64 is exactly representable; anything at or above it does not fit.
    if n >= 18_446_744_073_709_551_616.0 {
        return Err(format!("memory size {n} is too large"));
    }
    // In range and integral: the conversion is exact.
    Ok(n as u64)
}

fn unit_multiplier(unit: &str) -> Result<u128, String> {
    Ok(match unit {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "m" => {
            return Err(
                "unit \"m\" is ambiguous for memory (milli in Kubernetes, mebibytes in Docker); \
                 write Mi (1024*1024) or M (1000*1000)"
                    .to_string(),
            )
        }
        "K" => return Err("unit \"K\" is ambiguous; write k (1000) or Ki (1024)".to_string()),
        other => {
            let hint = match other.to_ascii_lowercase().trim_end_matches('b') {
                "k" | "ki" => " (did you mean Ki or k?)",
                "m" | "mi" => " (did you mean Mi or M?)",
                "g" | "gi" => " (did you mean Gi or G?)",
                "t" | "ti" => " (did you mean Ti or T?)",
                _ => "",
            };
            return Err(format!(
                "unknown memory unit {other:?}{hint}; use k, M, G, T, P, E or Ki, Mi, Gi, Ti, Pi, Ei"
            ));
        }
    })
}

fn text_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("memory size is empty; {MEMORY_HELP}"));
    }
    if t.starts_with('-') {
        return Err(format!("memory size {s:?} is negative"));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return Err(format!("{s:?} is not a memory size; {MEMORY_HELP}"));
    }
    let mult = unit_multiplier(unit).map_err(|e| format!("memory size {s:?}: {e}"))?;
    if unit.is_empty() && !frac.trim_end_matches('0').is_empty() {
        return Err(format!(
            "memory size {s:?} is not a whole number of bytes; {MEMORY_HELP}"
        ));
    }
    let too_large = || format!("memory size {s:?} is too large");
    if int.len() > 30 {
        return Err(too_large());
    }
    if frac.len() > 18 {
        return Err(format!("memory size {s:?} has too many decimal places"));
    }
    let int_val: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| too_large())?
    };
    let frac_val: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| too_large())?
    };
    let scale = 10u128.pow(frac.len() as u32);
    let whole = int_val.checked_mul(mult).ok_or_else(too_large)?;
    // Round the fractional part up to a whole byte.
    let part = (frac_val * mult).div_ceil(scale);
    let total = whole.checked_add(part).ok_or_else(too_large)?;
    u64::try_from(total).map_err(|_| too_large())
}

/// Parses a CPU count: a number (`0.5`, `2`), the same as text, or millicpus (`500m`).
/// The result is positive and at most [`MAX_CPUS`].
pub fn parse_cpus(q: &Quantity) -> Result<f64, String> {
    let value = match q {
        Quantity::Number(n) => *n,
        Quantity::Text(s) => text_cpus(s)?,
    };
    if !value.is_finite() {
        return Err(format!("cpus {value} is not a number"));
    }
    if value <= 0.0 {
        return Err(format!("cpus {q} must be positive"));
    }
    if value > MAX_CPUS {
        return Err(format!("cpus {q} exceeds the maximum of {MAX_CPUS}"));
    }
    Ok(value)
}

fn text_cpus(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let bad = || {
        format!(
            "{s:?} is not a CPU count; expected a number such as 0.5 or 2, or millicpus such as 500m"
        )
    };
    if t.starts_with('-') {
        return Err(format!("cpus {s:?} must be positive"));
    }
    let (num, milli) = match t.strip_suffix('m') {
        Some(n) => (n, true),
        None => (t, false),
    };
    let well_formed = !num.is_empty()
        && num.chars().all(|c| c.is_ascii_digit() || c == '.')
        && num.chars().filter(|&c| c == '.').count() <= 1
        && num.chars().any(|c| c.is_ascii_digit());
    if !well_formed || (milli && num.contains('.')) {
        return Err(bad());
    }
    let v: f64 = num.parse().map_err(|_| bad())?;
    Ok(if milli { v / 1000.0 } else { v })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn text(s: &str) -> Quantity {
        Quantity::Text(s.to_string())
    }

    #[test]
    fn memory_units() {
        let cases: &[(&str, u64)] = &[
            ("256Mi", 256 << 20),
            ("2Gi", 2 << 30),
            ("1G", 1_000_000_000),
            ("512M", 512_000_000),
            ("1024k", 1_024_000),
            ("1024Ki", 1 << 20),
            ("1Ti", 1 << 40),
            ("1Pi", 1 << 50),
            ("1Ei", 1 << 60),
            ("3T", 3_000_000_000_000),
            ("2P", 2_000_000_000_000_000),
            ("1E", 1_000_000_000_000_000_000),
            ("4096", 4096),
            ("0", 0),
            ("1.5Gi", 3 << 29),
            (".5Ki", 512),
            ("1.0", 1),
            (" 64Mi ", 64 << 20),
            // fractional bytes round up
            ("1.1Ki", 1127),
        ];
        for (s, want) in cases {
            assert_eq!(parse_memory(&text(s)), Ok(*want), "{s}");
        }
    }

    #[test]
    fn memory_numbers() {
        assert_eq!(
            parse_memory(&Quantity::Number(268_435_456.0)),
            Ok(268_435_456)
        );
        assert_eq!(parse_memory(&Quantity::Number(0.0)), Ok(0));
        let err = parse_memory(&Quantity::Number(1.5)).unwrap_err();
        assert!(err.contains("whole number of bytes"), "{err}");
        let err = parse_memory(&Quantity::Number(-1.0)).unwrap_err();
        assert!(err.contains("negative"), "{err}");
        let err = parse_memory(&Quantity::Number(f64::NAN)).unwrap_err();
        assert!(err.contains("not a number"), "{err}");
        let err = parse_memory(&Quantity::Number(1e30)).unwrap_err();
        assert!(err.contains("too large"), "{err}");
    }

    #[test]
    fn memory_errors() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("-1Gi", "negative"),
            ("lots", "not a memory size"),
            ("1.2.3Mi", "not a memory size"),
            ("512m", "ambiguous"),
            ("4K", "ambiguous"),
            ("1GB", "did you mean Gi or G?"),
            ("1mb", "did you mean Mi or M?"),
            ("1Xi", "unknown memory unit \"Xi\""),
            ("1.5", "whole number of bytes"),
            ("16Ei", "too large"),
            ("99999999999999999999999999999999", "too large"),
            ("Gi", "not a memory size"),
        ];
        for (s, want) in cases {
            let err = parse_memory(&text(s)).unwrap_err();
            assert!(err.contains(want), "{s:?}: {err}");
        }
    }

    #[test]
    fn cpus() {
        let ok: &[(Quantity, f64)] = &[
            (Quantity::Number(0.5), 0.5),
            (Quantity::Number(2.0), 2.0),
            (text("0.5"), 0.5),
            (text("500m"), 0.5),
            (text("2"), 2.0),
            (text("1024"), 1024.0),
            (text("250m"), 0.25),
        ];
        for (q, want) in ok {
            assert_eq!(parse_cpus(q), Ok(*want), "{q}");
        }
    }

    #[test]
    fn cpu_errors() {
        let cases: &[(Quantity, &str)] = &[
            (Quantity::Number(0.0), "must be positive"),
            (Quantity::Number(-1.0), "must be positive"),
            (Quantity::Number(1025.0), "exceeds the maximum of 1024"),
            (Quantity::Number(f64::INFINITY), "not a number"),
            (text("0m"), "must be positive"),
            (text("-2"), "must be positive"),
            (text("2000"), "exceeds the maximum"),
            (text("lots"), "not a CPU count"),
            (text("1.5m"), "not a CPU count"),
            (text("inf"), "not a CPU count"),
            (text("1e3"), "not a CPU count"),
            (text(""), "not a CPU count"),
        ];
        for (q, want) in cases {
            let err = parse_cpus(q).unwrap_err();
            assert!(err.contains(want), "{q}: {err}");
        }
    }
}
