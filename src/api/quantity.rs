//! Kubernetes quantities (`500m`, `1.5`, `64Mi`, `1e3`, `2G`), read as the API server reads
//! them (`resource.Quantity`), exactly: no floating point.

/// Why a quantity was refused; the texts complete "<field>: invalid value \"<q>\" ...".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("is empty")]
    Empty,
    #[error("must not be negative")]
    Negative,
    #[error("is not a quantity (expected a number with an optional suffix such as m, Ki, Mi, Gi, k, M, G)")]
    Malformed,
    #[error("has an unknown suffix {0:?} (known: n, u, m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei, or an exponent like e3)")]
    UnknownSuffix(String),
    #[error("is out of range (at most 2^63 - 1 bytes or millicores, exponents within ±30)")]
    OutOfRange,
}

/// Parses a Kubernetes quantity (`500m`, `1.5`, `64Mi`, `1e3`, `2G`) into a count of `unit`
/// (1000 for millicores, 1 for bytes), rounded up as the API server's `MilliValue`/`Value` do.
/// Negative values are refused: requests and limits cannot be negative.
pub fn parse_quantity(s: &str, unit: u128) -> Result<u64, QuantityError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(QuantityError::Empty);
    }
    if t.starts_with('-') {
        return Err(QuantityError::Negative);
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(end);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return Err(QuantityError::Malformed);
    }
    // (numerator, denominator) of the suffix's multiplier.
    let pow = |b: u128, e: u32| b.checked_pow(e);
    let (mut num_m, mut den_m): (Option<u128>, Option<u128>) = match suffix {
        "" => (Some(1), Some(1)),
        "n" => (Some(1), pow(10, 9)),
        "u" => (Some(1), pow(10, 6)),
        "m" => (Some(1), pow(10, 3)),
        "k" => (pow(10, 3), Some(1)),
        "M" => (pow(10, 6), Some(1)),
        "G" => (pow(10, 9), Some(1)),
        "T" => (pow(10, 12), Some(1)),
        "P" => (pow(10, 15), Some(1)),
        "E" => (pow(10, 18), Some(1)),
        "Ki" => (pow(2, 10), Some(1)),
        "Mi" => (pow(2, 20), Some(1)),
        "Gi" => (pow(2, 30), Some(1)),
        "Ti" => (pow(2, 40), Some(1)),
        "Pi" => (pow(2, 50), Some(1)),
        "Ei" => (pow(2, 60), Some(1)),
        s if s.starts_with(['e', 'E']) => {
            let e: i32 = s[1..]
                .parse()
                .map_err(|_| QuantityError::UnknownSuffix(suffix.into()))?;
            if e.unsigned_abs() > 30 {
                return Err(QuantityError::OutOfRange);
            }
            if e >= 0 {
                (pow(10, e as u32), Some(1))
            } else {
                (Some(1), pow(10, e.unsigned_abs()))
            }
        }
        _ => return Err(QuantityError::UnknownSuffix(suffix.into())),
    };
    if frac.len() > 30 || int.len() > 30 {
        return Err(QuantityError::OutOfRange);
    }
    let digits: u128 = format!("{int}{frac}")
        .trim_start_matches('0')
        .parse()
        .or_else(|e: std::num::ParseIntError| match e.kind() {
            std::num::IntErrorKind::Empty => Ok(0),
            _ => Err(QuantityError::OutOfRange),
        })?;
    den_m = den_m.and_then(|d| d.checked_mul(10u128.pow(frac.len() as u32)));
    num_m = num_m.and_then(|n| n.checked_mul(unit));
    let (n, d) = match (num_m, den_m) {
        (Some(n), Some(d)) => (n, d),
        _ => return Err(QuantityError::OutOfRange),
    };
    let v = digits.checked_mul(n).ok_or(QuantityError::OutOfRange)?;
    let v = v.div_ceil(d);
    u64::try_from(v)
        .ok()
        .filter(|v| *v <= i64::MAX as u64)
        .ok_or(QuantityError::OutOfRange)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_the_api_server() {
        let cpu = |s| parse_quantity(s, 1000);
        let mem = |s| parse_quantity(s, 1);
        assert_eq!(cpu("500m"), Ok(500));
        assert_eq!(cpu("1"), Ok(1000));
        assert_eq!(cpu("1.5"), Ok(1500));
        assert_eq!(cpu("0.1"), Ok(100));
        assert_eq!(cpu("100u"), Ok(1), "rounded up to a millicore");
        assert_eq!(cpu("2e-3"), Ok(2));
        assert_eq!(mem("64Mi"), Ok(64 << 20));
        assert_eq!(mem("1G"), Ok(1_000_000_000));
        assert_eq!(mem("1.5Gi"), Ok(3 << 29));
        assert_eq!(mem("129e6"), Ok(129_000_000));
        assert_eq!(mem("128974848"), Ok(128_974_848));
        assert_eq!(mem("0"), Ok(0));
        assert_eq!(mem("+5k"), Ok(5000));
        for bad in [
            "12x",
            "",
            "-1",
            "-100Mi",
            "1.2.3",
            "Mi",
            "1 Mi",
            "1e",
            "1e99",
            "99999999999999999999Ei",
        ] {
            assert!(mem(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(mem("-1"), Err(QuantityError::Negative));
        assert!(mem("12x").unwrap_err().to_string().contains("\"x\""));
    }
}
