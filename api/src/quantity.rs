//! Kubernetes resource quantities (`10Gi`, `500M`) as bytes.

/// Bytes in a Kubernetes quantity (`10Gi`, `500M`, `1.5Gi`, `1e9`), rounded up; `None` when it
/// is not one or is negative.
pub fn quantity_bytes(quantity: &str) -> Option<u64> {
    let q = quantity.trim();
    let q = q.strip_prefix('+').unwrap_or(q);
    let number_len = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let mut mantissa: u128 = 0;
    for digit in whole.bytes().chain(fraction.bytes()) {
        if !digit.is_ascii_digit() {
            return None;
        }
        mantissa = mantissa
            .checked_mul(10)?
            .checked_add(u128::from(digit - b'0'))?;
    }
    let (pow2, mut pow10): (u32, i32) = match suffix {
        "" => (0, 0),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        exp => {
            let digits = exp.strip_prefix(['e', 'E'])?;
            (0, digits.parse::<i32>().ok().filter(|e| e.abs() <= 30)?)
        }
    };
    pow10 -= i32::try_from(fraction.len()).ok()?;
    let mut numerator = mantissa.checked_mul(1u128.checked_shl(pow2)?)?;
    let mut denominator: u128 = 1;
    if pow10 >= 0 {
        numerator = numerator.checked_mul(10u128.checked_pow(pow10.unsigned_abs())?)?;
    } else {
        denominator = 10u128.checked_pow(pow10.unsigned_abs())?;
    }
    u64::try_from(numerator.div_ceil(denominator)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_in_bytes() {
        assert_eq!(quantity_bytes("10Gi"), Some(10 << 30));
        assert_eq!(quantity_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(quantity_bytes("500M"), Some(500_000_000));
        assert_eq!(quantity_bytes("1e3"), Some(1000));
        assert_eq!(quantity_bytes("1E"), Some(1_000_000_000_000_000_000));
        assert_eq!(quantity_bytes("128974848"), Some(128_974_848));
        assert_eq!(quantity_bytes("100m"), Some(1));
        assert_eq!(quantity_bytes("0"), Some(0));
        assert_eq!(quantity_bytes("+2k"), Some(2000));
        assert_eq!(quantity_bytes("-1Gi"), None);
        assert_eq!(quantity_bytes("Gi"), None);
        assert_eq!(quantity_bytes("12XB"), None);
        assert_eq!(quantity_bytes("1.2.3"), None);
        assert_eq!(quantity_bytes("20Ei"), None, "overflows u64");
    }
}
